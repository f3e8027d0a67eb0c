"""The consumed history, kept bounded: what an update replays, without reading history back.

A fine-tune trains on its new rows plus a replay sample of the history its champion was trained
on, and is scored for forgetting on a further sample. Drawing those from every consumed batch
costs O(history) at each update; instead the history is kept as data, folded in batch by batch:

- a reservoir of ``settings.replay_reservoir_rows`` rows, a weighted sample without replacement
  (Efraimidis and Spirakis: each row draws the key ln(E) - t ln2 / half-life, E ~ Exp(1), t its
  event time in days, and the reservoir keeps the smallest keys). A row half-life days older
  weighs half as much, as ``replay_sample`` weighs it. The reservoir's first n rows by key are a
  recency-weighted sample of n rows of the whole history, and the next m rows one of the rest, so
  replay and the forgetting slice come from its head, whatever the history's length;
- per user and per item, the first time it was seen with each event type: who and what the
  champion knew before its watermark, for the evaluation's known users and new items.

Each batch gets its keys from ``(seed, batch id)``, so the state is a function of the consumed
batches alone: a fold that dies halfway leaves the previous state, and any run may fold again.
A promotion folds its batches at the end of its run; an update folds whatever an earlier run
left unfolded before it assembles. A batch released from consumption (a promotion undone), or a
change of seed, half-life or a larger capacity, rebuilds the state from every consumed batch once.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from data_checks.contract import EVENT_TYPES, empty_interactions, with_contract_columns
from models.settings import Settings
from models.files import locked, read_parquet, temporary_beside, write_parquet
from tasks import ledger

logger = logging.getLogger(__name__)

FORMAT = 1
KEY, BATCH = "_replay_key", "_batch_id"
FIRST_SEEN = {event_type: f"first_{event_type}" for event_type in EVENT_TYPES}


@dataclass(frozen=True)
class HistorySample:
    rows: pd.DataFrame  # the reservoir, smallest key first: contract columns plus KEY and BATCH
    users: pd.DataFrame  # indexed by user_id: FIRST_SEEN columns (NaT: never with that type)
    items: pd.DataFrame  # indexed by item_id, the same
    batch_ids: frozenset[int]
    capacity: int
    history_rows: int  # rows folded in, the reservoir's population

    @property
    def complete(self) -> bool:
        """The reservoir holds the whole history: nothing was evicted."""
        return len(self.rows) == self.history_rows

    def head(self, until: pd.Timestamp | None, types: list[str]) -> pd.DataFrame:
        """Reservoir rows of ``types`` at or before ``until``, smallest key first: any head of
        them is a recency-weighted sample without replacement of that part of the history."""
        rows = self.rows if until is None else self.rows[self.rows["event_time"] <= until]
        return rows[rows["event_type"].isin(types)].drop(columns=[KEY, BATCH])

    def known_users(self, until: pd.Timestamp | None, types: list[str]) -> pd.Index:
        return _known(self.users, until, types)

    def known_items(self, until: pd.Timestamp | None, types: list[str]) -> pd.Index:
        return _known(self.items, until, types)


def _known(index: pd.DataFrame, until: pd.Timestamp | None, types: list[str]) -> pd.Index:
    first = index[[FIRST_SEEN[t] for t in types]].min(axis=1)
    return index.index[first.notna() if until is None else first <= until]


def keys(rows: pd.DataFrame, batch_id: int, half_life_days: float | None, seed: int) -> np.ndarray:
    """Each row's reservoir key: smaller is kept first; a row's chance follows 2^(t / half-life)."""
    exponential = np.random.default_rng([seed, batch_id]).standard_exponential(len(rows))
    log_key = np.log(np.maximum(exponential, np.finfo(float).tiny))
    if half_life_days:
        days = rows["event_time"].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 86_400e9
        log_key = log_key - days * (math.log(2) / half_life_days)
    return log_key


def state_dir(settings: Settings) -> Path:
    return settings.home / "state" / "history"


def fold(settings: Settings) -> HistorySample:
    """The history sample with every consumed batch folded in (each once): O(reservoir + the
    batches not yet folded). Serialised with other runs' folds by a lock; the new state is
    written whole and then named current, so a reader never sees half of it."""
    root = state_dir(settings)
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / "fold"):
        consumed = {
            b.id: b for b in ledger.consumed_batches(ledger.connect(settings.ledger_url)) if b.accepted_path and b.rows_accepted
        }
        sample, why = _load(root, settings)
        if sample is not None and not sample.batch_ids <= set(consumed):
            why, sample = "a batch it holds is no longer consumed (a promotion was undone)", None
        if sample is None:
            if consumed:
                _log().warning("building the replay history from %d consumed batches: %s", len(consumed), why)
            sample = _empty(settings.replay_reservoir_rows)
        todo = sorted(set(consumed) - sample.batch_ids)
        if not todo:
            return sample
        for batch_id in todo:
            sample = _fold_batch(sample, batch_id, consumed[batch_id].accepted_path, settings)
        _save(root, sample, settings)
        _log().info(
            "replay history: %d batch(es) folded in, %s of %s rows kept", len(todo), f"{len(sample.rows):,}", f"{sample.history_rows:,}",
        )
        return sample


def _fold_batch(sample: HistorySample, batch_id: int, path: str, settings: Settings) -> HistorySample:
    rows = with_contract_columns(read_parquet(path))
    rows[KEY] = keys(rows, batch_id, settings.replay_half_life_days, settings.seed)
    rows[BATCH] = np.int64(batch_id)
    merged = pd.concat([sample.rows, rows], ignore_index=True) if len(sample.rows) else rows
    if len(merged) > sample.capacity:
        kept = np.argpartition(merged[KEY].to_numpy(), sample.capacity - 1)[: sample.capacity]
        merged = merged.iloc[kept]
    merged = merged.sort_values(KEY, kind="stable", ignore_index=True)
    return HistorySample(
        merged, _first_seen(sample.users, rows, "user_id"), _first_seen(sample.items, rows, "item_id"),
        sample.batch_ids | {batch_id}, sample.capacity, sample.history_rows + len(rows),
    )


def _first_seen(index: pd.DataFrame, rows: pd.DataFrame, column: str) -> pd.DataFrame:
    times = rows["event_time"]
    wide = pd.DataFrame({FIRST_SEEN[t]: times.where(rows["event_type"] == t) for t in EVENT_TYPES})
    wide[column] = rows[column].to_numpy()
    new = wide.groupby(column, sort=False).min()
    if index.empty:
        return new
    return pd.concat([index, new]).groupby(level=0, sort=False).min()


def _empty(capacity: int) -> HistorySample:
    rows = empty_interactions().assign(**{KEY: pd.Series(dtype="float64"), BATCH: pd.Series(dtype="int64")})
    columns = {name: pd.Series(dtype="datetime64[ns, UTC]") for name in FIRST_SEEN.values()}
    users, items = pd.DataFrame(columns, index=pd.Index([], name="user_id")), pd.DataFrame(columns, index=pd.Index([], name="item_id"))
    return HistorySample(rows, users, items, frozenset(), capacity, 0)


def _meta(settings: Settings) -> dict:
    return {"format": FORMAT, "half_life_days": settings.replay_half_life_days, "seed": settings.seed}


def _load(root: Path, settings: Settings) -> tuple[HistorySample | None, str]:
    """The current state, or (None, why it cannot be used)."""
    try:
        name = (root / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None, "no replay history yet"
    folder = root / name
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if {k: meta.get(k) for k in _meta(settings)} != _meta(settings):
            return None, f"it was drawn with {meta} and the settings now say {_meta(settings)}"
        if meta["capacity"] < settings.replay_reservoir_rows and meta["history_rows"] > meta["capacity"]:
            return None, f"replay_reservoir_rows grew from {meta['capacity']:,} to {settings.replay_reservoir_rows:,}"
        rows = read_parquet(folder / "rows.parquet")
        users, items = read_parquet(folder / "users.parquet"), read_parquet(folder / "items.parquet")
    except (OSError, ValueError, KeyError) as error:  # a damaged state is rebuilt, never trusted
        return None, f"{folder} cannot be read ({type(error).__name__}: {error})"
    rows = rows.iloc[: settings.replay_reservoir_rows]  # a smaller capacity keeps the smallest keys
    return HistorySample(
        rows, users, items, frozenset(meta["batch_ids"]), settings.replay_reservoir_rows, int(meta["history_rows"]),
    ), ""


def _save(root: Path, sample: HistorySample, settings: Settings) -> None:
    name = f"v-{uuid.uuid4().hex[:12]}"
    folder = root / name
    folder.mkdir()
    write_parquet(sample.rows, folder / "rows.parquet")
    write_parquet(sample.users, folder / "users.parquet", index=None)
    write_parquet(sample.items, folder / "items.parquet", index=None)
    meta = _meta(settings) | {
        "capacity": sample.capacity, "history_rows": sample.history_rows, "batch_ids": sorted(sample.batch_ids),
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    pointer = temporary_beside(root / "CURRENT")
    pointer.write_text(name)
    pointer.replace(root / "CURRENT")
    for old in root.glob("v-*"):  # every reader and writer holds the lock: no one reads them now
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _log() -> logging.Logger:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow run (tests, the backtest's helpers)
        return logger


@task(name="fold-consumed-history", cache_policy=NO_CACHE)
def fold_consumed_history(settings: Settings) -> None:
    """Fold the batches a promotion just consumed into the replay history, while they are fresh
    on disk. Never fails the run: the next update folds what is left."""
    try:
        fold(settings)
    except Exception as error:  # the promotion stands; the next update's assemble folds again
        get_run_logger().warning("the replay history was not updated (%s: %s): the next update folds it", type(error).__name__, error)
