"""Drift of a new batch against the reference sample kept with the champion (Evidently 0.7).

The monitored columns are features a recommender cares about, with an explicit data definition
so ids are never treated as numbers. The champion's item popularity travels with the reference,
so the share of unseen items and a shift of popularity show up as drift too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

NUMERICAL = ["price", "quantity", "hour", "basket_size", "log_popularity_rank"]
CATEGORICAL = ["weekday", "country", "item_known"]


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    drift_share: float  # share of monitored columns that drifted
    drifted_columns: list[str]
    columns: list[ColumnDrift]
    unseen_item_share: float  # share of the batch's interactions on items the champion never saw
    report_path: str | None


def drift_features(interactions: pd.DataFrame, item_counts: pd.Series) -> pd.DataFrame:
    """Per-interaction features; ``item_counts`` is the champion's training popularity by item id."""
    ranks = item_counts.rank(ascending=False, method="first")
    rank = interactions["item_id"].map(ranks).astype("float64")
    known = rank.notna()
    event_time = interactions["event_time"]
    return pd.DataFrame(
        {
            "price": interactions["price"].astype("float64"),
            "quantity": interactions["quantity"].astype("float64"),
            "hour": event_time.dt.hour.astype("float64"),
            "basket_size": interactions.groupby("order_id")["item_id"].transform("size").astype("float64"),
            # Unseen items rank just past the catalog's tail.
            "log_popularity_rank": np.log1p(rank.fillna(len(ranks) + 1)),
            "weekday": event_time.dt.weekday.astype("string"),
            "country": interactions["country"].astype("string"),
            "item_known": known.map({True: "known", False: "unseen"}).astype("string"),
        }
    ).reset_index(drop=True)


def detect_drift(
    current: pd.DataFrame, reference: pd.DataFrame, item_counts: pd.Series, report_path: Path | None
) -> DriftResult:
    """Run Evidently's drift preset and read its result by metric type and column name."""
    definition = DataDefinition(numerical_columns=NUMERICAL, categorical_columns=CATEGORICAL)
    current_features = drift_features(current, item_counts)
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current_features, data_definition=definition),
        reference_data=Dataset.from_pandas(drift_features(reference, item_counts), data_definition=definition),
    )
    columns = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            score, threshold = float(metric["value"]), float(config["threshold"])
            columns.append(ColumnDrift(config["column"], config["method"], score, threshold, score >= threshold))
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report_path))
    drifted = [c.column for c in columns if c.drifted]
    return DriftResult(
        drift_share=len(drifted) / len(columns) if columns else 0.0,
        drifted_columns=drifted,
        columns=columns,
        unseen_item_share=float((current_features["item_known"] == "unseen").mean()),
        report_path=str(report_path) if report_path else None,
    )


def reference_sample(interactions: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """Whole orders drawn at random until about ``max_rows`` rows, so basket sizes stay true."""
    orders = interactions["order_id"].drop_duplicates().sample(frac=1.0, random_state=seed)
    sizes = interactions.groupby("order_id").size().reindex(orders)
    keep = sizes.index[sizes.cumsum() <= max_rows]
    return interactions[interactions["order_id"].isin(keep)].reset_index(drop=True)
