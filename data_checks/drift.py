"""Drift of a new batch against the reference sample kept with the champion (Evidently 0.7).

The monitored columns are features a recommender cares about, with an explicit data definition
so ids are never treated as numbers. The champion's own counts (interactions per item in its
training data) travel with it, so a shift of popularity and traffic moving to new items show up
as drift too, and the catalog's categories show what kind of things sell.

Only what the source sends is monitored: price, quantity, country and basket size where the
batch and the reference hold values of them, and the mix of event types where either holds a
type other than purchase (a source of purchases alone has one type, which cannot drift).

User activity is reported, not monitored: the share of interactions by users the champion never
saw. Every period brings first-time customers, so against a reference drawn from the champion's
own training data (where every user is known) a per-user column would drift every time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_checks.contract import DEFAULT_EVENT_TYPE, basket_keys, event_types_of, with_contract_columns
from data_checks.markup import html_text, script_json

NUMERICAL = ["price", "quantity", "hour", "basket_size", "log_popularity_rank"]
CATEGORICAL = ["weekday", "country", "item_known", "category", "event_type"]
# Features read from a column a source may not send: monitored only where both sides have values.
OPTIONAL_FEATURES = ("price", "quantity", "basket_size", "country")
# Evidently 0.7.23 embeds the report's data as two assignments, one line each, in a <script>
# element of the page (json.dumps writes no line break inside a value).
EVIDENTLY_DATA = re.compile(r"^    var (metric_[0-9a-f]{32}) = (.*);\n    var additional_graphs_\1 = (.*);$", re.MULTILINE)


@dataclass(frozen=True)
class ChampionCounts:
    """What the champion saw in training: interactions per item id and per user id, and the
    catalog's category of each item (empty when the source has none)."""

    items: pd.Series
    users: pd.Series
    categories: pd.Series = field(default_factory=lambda: pd.Series(dtype="string"))


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
    unseen_user_share: float  # ... by users the champion never saw
    report_path: str | None
    rows_compared: int | None = None  # batch rows Evidently compared (a sample of whole orders of a large batch)
    rows: int | None = None  # the batch's rows


def drift_features(interactions: pd.DataFrame, counts: ChampionCounts) -> pd.DataFrame:
    """Per-interaction features, computed the same way for the reference and for a new batch."""
    ranks = counts.items.rank(ascending=False, method="first")
    rank = interactions["item_id"].map(ranks).astype("float64")
    known = rank.notna()
    interactions = with_contract_columns(interactions)
    event_time = interactions["event_time"]
    return pd.DataFrame(
        {
            "price": interactions["price"].astype("float64"),
            "quantity": interactions["quantity"].astype("float64"),
            "hour": event_time.dt.hour.astype("float64"),
            "basket_size": _basket_sizes(interactions),
            # Unseen items rank just past the catalog's tail.
            "log_popularity_rank": np.log1p(rank.fillna(len(ranks) + 1)),
            "weekday": event_time.dt.weekday.astype("string"),
            "country": interactions["country"].astype("string"),
            "item_known": known.map({True: "known", False: "unseen"}).astype("string"),
            # What kind of things sell: a category falling out of fashion shows here first.
            "category": interactions["item_id"].map(counts.categories).fillna("unknown").astype("string"),
            "event_type": event_types_of(interactions),
        }
    ).reset_index(drop=True)


def monitored_columns(current: pd.DataFrame, reference: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numerical, categorical) features to monitor: those both sides can speak of."""
    def has_values(column: str) -> bool:
        return bool(current[column].notna().any() and reference[column].notna().any())

    typed = bool((current["event_type"] != DEFAULT_EVENT_TYPE).any() or (reference["event_type"] != DEFAULT_EVENT_TYPE).any())
    keep = [c for c in [*NUMERICAL, *CATEGORICAL] if (c not in OPTIONAL_FEATURES or has_values(c)) and (c != "event_type" or typed)]
    return [c for c in NUMERICAL if c in keep], [c for c in CATEGORICAL if c in keep]


def for_report(features: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """The features with every category HTML-escaped, the same way for the reference and the
    batch: a one-to-one renaming, so no drift figure changes. The report's plots read tags in
    their labels (a country "<a href=...>" would be a link) and decode entities, so they show
    each value as written."""
    return features.assign(**{c: features[c].map(html_text, na_action="ignore").astype("string") for c in categorical})


def write_report(snapshot, path: Path) -> Path:
    """Evidently's HTML report with its embedded data escaped for a <script> element, so that
    no string in it (a value or a column name) can end the element or open a comment there."""
    page = snapshot.get_html_str(as_iframe=False)
    found = list(EVIDENTLY_DATA.finditer(page))
    if len(found) != 1:
        raise RuntimeError("the Evidently report's data is not where freshrec escapes it (written for evidently 0.7.23)")
    data = found[0]
    safe = f"    var {data[1]} = {script_json(data[2])};\n    var additional_graphs_{data[1]} = {script_json(data[3])};"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page[: data.start()] + safe + page[data.end() :], encoding="utf-8")
    return path


def _basket_sizes(interactions: pd.DataFrame) -> pd.Series:
    """Lines per order as the order arrived (validation keeps it), else as the rows show it;
    a row without an order has none."""
    if "order_lines" in interactions.columns:
        return interactions["order_lines"].astype("Float64").astype("float64")
    return interactions.groupby("order_id", dropna=True)["item_id"].transform("size").reindex(interactions.index).astype("float64")


def detect_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    counts: ChampionCounts,
    report_path: Path | None,
    sample_rows: int | None = None,
    seed: int = 0,
    whole_batch: tuple[int, float, float] | None = None,
) -> DriftResult:
    """Run Evidently's drift preset on the columns both sides can speak of (see
    `monitored_columns`) and read its result by metric type and column name. With
    ``sample_rows``, a larger batch is compared by whole orders drawn up to that many rows (see
    `reference_sample`); the shares of unseen items and users are always of the whole batch.
    ``whole_batch`` (rows, unseen item share, unseen user share): ``current`` is already the
    sample of a batch read elsewhere (tasks/monitor.py), and these are the whole batch's figures."""
    if whole_batch is not None:
        rows, unseen_items, unseen_users = whole_batch
    else:
        rows = len(current)
        unseen_items = int((~current["item_id"].isin(counts.items.index)).sum()) / rows if rows else 0.0
        unseen_users = int((~current["user_id"].isin(counts.users.index)).sum()) / rows if rows else 0.0
        if sample_rows is not None and rows > sample_rows:
            current = reference_sample(current, sample_rows, seed)
    current_features, reference_features = drift_features(current, counts), drift_features(reference, counts)
    numerical, categorical = monitored_columns(current_features, reference_features)
    # Imported here: Evidently takes seconds to import, and most processes that import this module
    # (the bootstrap, rollback, the service, the command line) never measure drift.
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    columns = [*numerical, *categorical]
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(for_report(current_features[columns], categorical), data_definition=definition),
        reference_data=Dataset.from_pandas(for_report(reference_features[columns], categorical), data_definition=definition),
    )
    columns = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            score, threshold = float(metric["value"]), float(config["threshold"])
            columns.append(ColumnDrift(config["column"], config["method"], score, threshold, score >= threshold))
    if report_path is not None:
        write_report(snapshot, report_path)
    drifted = [c.column for c in columns if c.drifted]
    return DriftResult(
        drift_share=len(drifted) / len(columns) if columns else 0.0,
        drifted_columns=drifted,
        columns=columns,
        unseen_item_share=unseen_items,
        unseen_user_share=unseen_users,
        report_path=str(report_path) if report_path else None,
        rows_compared=len(current),
        rows=rows,
    )


def detect_file_drift(
    path: str | Path, reference: pd.DataFrame, counts: ChampionCounts, report_path: Path | None, sample_rows: int, seed: int
) -> DriftResult:
    """`detect_drift` of an accepted Parquet file, with the result of reading it whole and
    sampling it (``sample_rows``). A larger file is held as Arrow (compact), its sample of whole
    orders chosen from three columns, and only the sample becomes a DataFrame: memory follows
    the sample, not the batch."""
    table = pq.read_table(path)
    if table.num_rows <= sample_rows:
        return detect_drift(table.to_pandas(), reference, counts, report_path)
    keys = table.select([c for c in ("user_id", "order_id", "event_time") if c in table.column_names]).to_pandas()
    keep = order_sample(keys, sample_rows, seed)
    del keys
    whole = (
        table.num_rows,
        (table.num_rows - pc.sum(is_in(table["item_id"], counts.items.index)).as_py()) / table.num_rows,
        (table.num_rows - pc.sum(is_in(table["user_id"], counts.users.index)).as_py()) / table.num_rows,
    )
    return detect_drift(table.filter(pa.array(keep)).to_pandas(), reference, counts, report_path, whole_batch=whole)


def is_in(column: pa.ChunkedArray, ids: pd.Index) -> pa.ChunkedArray:
    """Which values of an Arrow string column are among ``ids`` (False where null)."""
    return pc.fill_null(pc.is_in(column, value_set=pa.array(ids.astype(str).to_numpy(), type=column.type)), False)


def reference_sample(interactions: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """Whole orders drawn at random until about ``max_rows`` rows, so basket sizes stay true;
    a row without an order is drawn with the rest of its user's day."""
    interactions = with_contract_columns(interactions)
    return interactions[order_sample(interactions, max_rows, seed)].reset_index(drop=True)


def order_sample(keys: pd.DataFrame, max_rows: int, seed: int) -> np.ndarray:
    """Which rows `reference_sample` keeps, from the rows' user_id, order_id and event_time
    alone (a large batch's other columns need not be read to choose them)."""
    keys = with_contract_columns(keys)
    groups = keys["user_id"] + "\x00" + basket_keys(keys)  # an order id names one user
    orders = groups.drop_duplicates().sample(frac=1.0, random_state=seed)
    sizes = groups.value_counts().reindex(orders)
    keep = sizes.index[sizes.cumsum() <= max_rows]
    return groups.isin(keep).to_numpy()
