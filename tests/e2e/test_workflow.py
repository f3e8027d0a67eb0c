"""The real flows on a real (temporary) Prefect server and a real MLflow SQLite store.

Bootstrap, then two continuous-training runs over tiny synthetic weeks, then the champion read
back from the MLflow registry by alias and asked for recommendations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import ChampionExistsError, bootstrap
from flows.continuous_training import NoChampionError, continuous_training
from tasks import ledger
from tests.conftest import CHILD_ENV, TINY_SHOP
from tests.conftest import completed_run as run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_bootstrap_then_two_updates_and_the_champion_serves(settings, prefect_server):
    with pytest.raises(NoChampionError, match="run the bootstrap flow first"):
        continuous_training(settings)

    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    outcomes, message = run(bootstrap, settings)
    assert outcomes[-1].promoted and outcomes[-1].champion_version == "1"
    assert "champion is now version 1" in message
    with pytest.raises(ChampionExistsError):
        bootstrap(settings)

    # Run 1: a normal week (too little to act on) and a week with bad rows (volume now enough).
    write_weeks(settings.landing_dir, range(2, 4), bad_rows_weeks=(3,), config=TINY_SHOP)
    outcomes, message = run(continuous_training, settings)
    week2, week3 = outcomes
    assert not week2.update and "no signal crossed its threshold" in week2.reasons[0]
    assert [sig.name for sig in week2.signals] == ["drift_share", "decay", "new_rows", "champion_age_days"]
    assert not any(sig.fired for sig in week2.signals)
    assert week2.champion_version == "1"
    assert week3.status == "partially_accepted" and week3.rows_quarantined > 0
    assert week3.update and any("new rows" in r for r in week3.reasons)
    assert week3.challenger_recall is not None and week3.champion_recall is not None
    # Promoted iff it beat the champion on the newest slice and did not forget the historical one.
    forgot = any("beyond the tolerance" in r for r in week3.reasons)
    assert week3.promoted == (week3.challenger_recall > week3.champion_recall and not forgot)
    assert any(r.startswith("historical slice: challenger Recall@20") for r in week3.reasons)

    # Run 2: a broken file does not stop the line; drift (new items, popularity and price
    # shift) in the next week triggers an update on its own.
    champion_before = MlflowClient(settings.mlflow_tracking_uri).get_model_version_by_alias(settings.registered_model_name, "champion").version
    write_weeks(settings.landing_dir, range(4, 6), drift_from_week=5, broken_weeks=(4,), config=TINY_SHOP)
    outcomes, _ = run(continuous_training, settings)
    broken = next(o for o in outcomes if o.batch == "interactions-week004.csv")
    assert broken.status == "rejected" and not broken.update and "missing required columns: item_id" in broken.reasons[0]
    drift_week = next(o for o in outcomes if o.batch == "interactions-week005.csv")
    # The rejected file moved nothing: week 5's challenger was compared with the same champion.
    compared_with = MlflowClient(settings.mlflow_tracking_uri).get_run(drift_week.mlflow_run_id).data.params["champion_version"]
    assert compared_with == str(champion_before)
    assert drift_week.update and drift_week.drift_share >= settings.drift_share_threshold
    assert any("drift share" in r for r in drift_week.reasons)

    # Nothing new: the run completes and says so.
    outcomes, message = run(continuous_training, settings)
    assert outcomes == [] and "No new landing files" in message

    # The ledger accounts for every row, and promoted models consumed their batches.
    rows = ledger.all_batches(ledger.connect(settings.ledger_url))
    assert all(r.rows_in == r.rows_accepted + r.rows_quarantined for r in rows)
    client = MlflowClient(settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(settings.registered_model_name, "champion")
    assert {r.consumed_by_version for r in rows if r.file_name == "interactions-week000.csv"} == {"1"}

    # The champion, read back by alias, serves known users and strangers.
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{settings.registered_model_name}@champion")
    known_user = pd.read_parquet(next(settings.accepted_dir.glob("*-interactions-week000.parquet")))["user_id"].iloc[0]
    recs = model.predict(pd.DataFrame({"user_id": [known_user, "never-seen"], "k": [5, 5]}))
    assert recs.groupby("user_id").size().to_dict() == {known_user: 5, "never-seen": 5}
    assert champion.run_id and client.get_run(champion.run_id).data.params["trained_until"]

    # A person can follow the training: the loss curves and the schedule, as figure and metrics.
    training_run = client.get_run(champion.run_id)
    assert "training/curves.png" in [f.path for f in client.list_artifacts(champion.run_id, "training")]
    epochs = int(training_run.data.params["epochs"])
    assert len(client.get_metric_history(champion.run_id, "epoch_loss")) == epochs
    assert len(client.get_metric_history(champion.run_id, "validation_recall")) == epochs
    assert 0 <= int(training_run.data.params["best_epoch"]) <= epochs
    assert not list(settings.checkpoints_dir.glob("training-*.pt"))  # resume files go when training ends

    # Every run left a markdown artifact with its decisions.
    async def artifacts():
        async with get_client() as prefect:
            return await prefect.read_artifacts()

    import asyncio

    reports = [a for a in asyncio.run(artifacts()) if a.key == "freshrec-report"]
    assert reports and any("interactions-week005.csv" in (a.data or "") for a in reports)
    keys = {a.key for a in asyncio.run(artifacts())}
    assert "validation-interactions-week003-csv" in keys  # expectation, level, rows failed, share
    assert "decision-interactions-week002-csv" in keys  # signal, value, threshold, verdict
    assert "drift-report-interactions-week002-csv" in keys  # a link to the Evidently report in MLflow
    decisions = MlflowClient(settings.mlflow_tracking_uri).search_runs(
        [client.get_experiment_by_name(settings.experiment_name).experiment_id], "tags.`freshrec.stage` = 'decision'"
    )
    assert len(decisions) == 3  # weeks 2, 3 and 5 (week 4 was rejected), each decided once
    artifacts_of_one = [f.path for f in client.list_artifacts(decisions[0].info.run_id, "reports")]
    assert artifacts_of_one and artifacts_of_one[0].endswith(".drift.html")


def test_command_line_json_and_exit_codes(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL

    # MLFLOW_TRACKING_URI too: the previous test's mlflow.set_tracking_uri exported it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"} | CHILD_ENV
    env |= {
        "FRESHREC_HOME": str(tmp_path / "cli"),
        "FRESHREC_VOLUME_THRESHOLD_ROWS": "4000",
        "FRESHREC_MIN_NEW_ROWS": "500",
        "FRESHREC_LANDING_SETTLE_SECONDS": "0",  # the test writes whole files
        "FRESHREC_SCRATCH_EPOCHS": "3",
        "FRESHREC_FINETUNE_EPOCHS": "2",
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # share the test server: no extra start-up
    }

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "flows", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    help_text = cli("--help").stdout
    for command in ("bootstrap", "run", "generate"):
        assert command in help_text

    failed = cli("run", "--json")
    assert failed.returncode != 0
    assert "run the bootstrap flow first" in failed.stderr

    assert cli("generate", "--weeks", "2").returncode == 0
    booted = cli("bootstrap", "--json")
    assert booted.returncode == 0, booted.stderr[-2000:]
    assert cli("generate", "--start-week", "2", "--weeks", "1", "--broken-week", "2").returncode == 0
    result = cli("run", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [json.loads(text) for text in result.stdout.splitlines() if text.startswith("{")]
    for key in ("batch", "rows_in", "rows_accepted", "rows_quarantined", "status", "update", "reasons", "promoted", "champion_version"):
        assert key in line
    assert line["status"] == "rejected" and line["rows_quarantined"] == line["rows_in"] > 0
    assert line["update"] is False and "missing required columns: item_id" in line["reasons"][0]
