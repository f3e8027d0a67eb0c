"""The training run's dataset inputs: a digest over every row, a schema equal to MLflow's own."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from tasks.registry import LINEAGE_SCHEMA_ROWS, lineage_dataset


def frame(rows: int = 3 * LINEAGE_SCHEMA_ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    data = pd.DataFrame({
        "user_id": [f"u{i % 997}" for i in range(rows)],
        "item_id": [f"i{i % 211}" for i in range(rows)],
        "quantity": rng.integers(1, 9, rows),
        "price": rng.random(rows).round(2),
        "event_time": pd.date_range("2024-01-01", periods=rows, freq="min", tz="UTC"),
        "country": ["United Kingdom"] * rows,
    })
    data.loc[2 * LINEAGE_SCHEMA_ROWS + 7, "country"] = None  # a gap far past the rows sampled
    return data


def test_the_schema_is_mlflows_inference_over_every_row():
    data = frame()
    schema = lineage_dataset(data, "file:///accepted", "shop-training").schema
    assert schema == infer_signature(data).inputs
    assert not {spec.name: spec.required for spec in schema.inputs}["country"]  # found past the sample
    gapless = data.fillna({"country": "France"})
    assert lineage_dataset(gapless, "file:///accepted", "shop-training").schema == infer_signature(gapless).inputs


def test_the_digest_covers_every_row_and_the_column_names():
    data = frame()
    digest = lineage_dataset(data, "file:///a", "d").digest
    assert lineage_dataset(data.copy(), "file:///a", "d").digest == digest
    late = data.copy()
    late.loc[len(late) - 1, "quantity"] += 1  # past MLflow's own digest rows
    assert lineage_dataset(late, "file:///a", "d").digest != digest
    assert lineage_dataset(data.rename(columns={"price": "unit_price"}), "file:///a", "d").digest != digest


def test_the_dataset_is_logged_with_its_schema_profile_and_digest(tmp_path, monkeypatch):
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", previous)  # set_tracking_uri exports it: restored on teardown
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    data = frame()
    dataset = lineage_dataset(data, (tmp_path / "accepted").as_uri(), "shop-training")
    try:
        with mlflow.start_run() as run:
            mlflow.log_input(dataset, context="training")
    finally:
        mlflow.set_tracking_uri(previous)
    logged = MlflowClient(uri).get_run(run.info.run_id).inputs.dataset_inputs[0].dataset
    assert logged.digest == dataset.digest and logged.name == "shop-training"
    assert json.loads(logged.profile)["num_rows"] == len(data)
    columns = {c["name"]: c for c in json.loads(logged.schema)["mlflow_colspec"]}
    assert set(columns) == set(data.columns) and columns["country"]["required"] is False
