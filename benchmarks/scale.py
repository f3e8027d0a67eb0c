"""What one continuous-training update costs as the shop grows: the real flows, stage by stage.

    python benchmarks/scale.py                        # the three shops below, into benchmarks/results/scale.json
    python benchmarks/scale.py --shop 1m --out benchmarks/results/scale_1m.json   # one of them
    python benchmarks/scale.py --shop 200k:20k:5k --batch-rows 100k               # any size: rows:users:items
    python benchmarks/scale.py --smoke                # a tiny shop, about 2 minutes (the slow test runs it)
    python benchmarks/scale.py --trained-history-rows 5M   # a bootstrap of at most ~5M rows; older weeks consumed

Shops (history rows, users, items): 1m = (1M, 100k, 20k), 5m = (5M, 500k, 100k),
20m = (20M, 2M, 500k); each gets an update batch of ``--batch-rows`` (1M) rows.

For each shop, under ``--work`` (default: <system temp dir>/freshrec-scale, never the repository):

1. **generate** (numpy, vectorised): a catalog CSV (item_id, title, category, price) and the
   history as weekly Parquet landing files of at most about 1M rows (at least 8 weeks), then the
   update batch, one more week, set aside. Orders (order_id) of 1 + Poisson(4) lines, buyers
   drawn by a gamma-distributed activity, items by Zipf-like popularity (1 / rank^0.9), tilted to
   each user's favourite category, and 30% of lines re-buy one of the user's 8 favourites;
   quantity 1 + Poisson(2), the catalog price, the user's country, times on shop hours, quieter
   weekends. Titles come from a small vocabulary (about 2.8k distinct phrases), so MiniLM, which
   encodes each distinct title once, costs the bootstrap seconds, not the encoding of 500k titles.
2. **bootstrap**, in a child process: the real ``bootstrap`` flow (``flows/bootstrap.py``) on the
   landed history. It validates every weekly file, then trains the first champion from scratch
   with ``scratch_epochs`` = ``--bootstrap-epochs`` (1; no setting caps a scratch training's
   steps: ``finetune_max_steps`` applies to fine-tunes only), evaluates, logs and registers it.
   Its holdout is sized (``holdout_fraction`` = min(0.2, batch / (4 x history))) so that the
   rows it carries over into the next update are what a steady-state update carries (a quarter
   of a batch), not 20% of the whole history (``--first-update`` keeps the default 0.2 and so
   measures the first update after a bootstrap instead).
   With ``--trained-history-rows ROWS`` the bootstrap trains on the newest weeks holding about
   ROWS rows only (a retrain reads every row it trains on: 20M rows of history do not fit a
   scratch training in 24 GB); a **consume** phase, in a child process, then lands the older
   weeks, validates them with the real ``validate-landing`` flow, records them in the ledger as
   consumed by the champion and folds them into the replay history (``tasks.history.fold``):
   the state of a shop whose older batches earlier versions consumed. They all precede the
   champion's watermark, so the update reads them through the replay history only, as it would
   after months of updates.
3. **update**, in a child process: the batch is moved into landing/ and the real
   ``continuous-training`` flow (``flows/continuous_training.py``) runs once, with the product's
   defaults except ``volume_threshold_rows`` = batch / 2 (so the volume signal fires) and
   ``min_new_rows`` = min(1000, batch / 2): it validates the batch, measures drift and decay,
   decides, assembles the training data, fine-tunes from the champion, evaluates both models,
   logs the run and registers (or rejects) the challenger.

Both children get their settings as FRESHREC_* variables (as a deployment's worker would), share
one Prefect server the benchmark starts on loopback, and track to the MLflow SQLite store in the
shop's freshrec home. Each child's peak RSS comes from ``os.wait4``; the update's stages are the
run times of its Prefect task runs (``validate-batch``, ``detect-batch-drift``, ``measure-decay``,
``assemble-training-data``, ``train-challenger``, ``evaluate-models``, ``log-training-run``,
``register-champion``; every other task counts as "other"); its training throughput is
(new + replayed rows) x epochs / ``train_seconds``, read from the MLflow training run (and, for
the SGD steps alone, over the epochs' own seconds from the train task's log).

Writes ``--out`` (benchmarks/results/scale.json) after every shop and a figure beside it (.png).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_checks.sources import write_landing_csv
from data_checks.sources.synthetic import ADJECTIVES, CATEGORIES, COUNTRIES, COUNTRY_WEIGHTS, NOUNS, WEEKDAY_WEIGHTS

RESULTS_DIR = Path(__file__).resolve().parent / "results"
EPOCH = pd.Timestamp("2024-01-01", tz="UTC")  # a Monday, safely in the past (future events are quarantined)
MAX_WEEK_ROWS = 1_000_000  # rows of one landing file of history at most (more weeks past that)
MIN_WEEKS = 8
PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm redraw, e.g. "training:  52%|#####     | 203k/394k"
OLDER = "older"  # the home's folder of the weeks the bootstrap does not train on (--trained-history-rows)
MARKER = "FRESHREC-SCALE"  # in every shop folder this benchmark made, so a rerun may delete it
COLOURS = np.array(["red", "blue", "green", "cream", "black", "white", "pink", "grey", "gold", "teal"])
# Prefect task names per stage of the update; every other task run of the update is "other".
STAGES = {
    "validate": ("validate-batch",),
    "drift": ("detect-batch-drift",),
    "decay": ("measure-decay",),
    "assemble": ("assemble-training-data",),
    "train": ("train-challenger",),
    "evaluate": ("evaluate-models",),
    "log": ("log-training-run",),
    "register": ("register-champion",),
}
# What each measurement is, written into the results file beside them.
FIELDS = {
    "update_seconds": "wall time of the update's process: interpreter start and imports, then the continuous-training flow",
    "update_flow_seconds": "run time of the continuous-training flow run (Prefect), its subflows included",
    "stages": "run time of the update's Prefect task runs, by stage; 'other' is every other task (other_tasks names them)",
    "peak_rss_mb": "peak resident memory of the update's process (ru_maxrss from os.wait4)",
    "train_interactions_per_second": "(new + replayed rows) x epochs / train_seconds of the MLflow training run (prepare, "
    "per-epoch validation and the memory-weight calibration included)",
    "sgd_interactions_per_second": "the same rows over the epochs' own seconds (the optimizer steps alone), from the train task's log",
    "bootstrap_seconds": "wall time of the bootstrap's process (validation of the history, scratch training, evaluation, registration)",
    "generate_seconds": "writing the shop's landing files (not part of any phase)",
    "code": "the commit measured and the tracked files that differed from it when the shop started",
}
# The three shops of the issue: history rows, users, items.
SHOPS = {"1m": (1_000_000, 100_000, 20_000), "5m": (5_000_000, 500_000, 100_000), "20m": (20_000_000, 2_000_000, 500_000)}
SMOKE = (20_000, 2_000, 400)
SMOKE_BATCH_ROWS = 5_000


@dataclass(frozen=True)
class Shop:
    name: str
    history_rows: int
    users: int
    items: int
    batch_rows: int

    @property
    def weeks(self) -> int:
        return max(MIN_WEEKS, math.ceil(self.history_rows / MAX_WEEK_ROWS))

    @property
    def label(self) -> str:
        return f"{_short(self.history_rows)} rows, {_short(self.users)} users, {_short(self.items)} items"




def _short(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return str(n)


def _count(text: str) -> int:
    """'200k' -> 200000, '1.5M' -> 1500000, '300' -> 300."""
    match = re.fullmatch(r"([0-9.]+)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 200k, 1M, 5000)")
    return int(float(match[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[match[2].lower()])


def parse_shop(text: str, batch_rows: int) -> Shop:
    """A shop by name (1m, 5m, 20m) or as ROWS:USERS:ITEMS (200k:20k:5k)."""
    if text.lower() in SHOPS:
        rows, users, items = SHOPS[text.lower()]
    else:
        parts = text.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"a shop is one of {', '.join(SHOPS)} or ROWS:USERS:ITEMS, not {text!r}")
        rows, users, items = (_count(p) for p in parts)
    return Shop(f"{_short(rows)}-{_short(users)}-{_short(items)}", rows, users, items, batch_rows)


# --- generation ---------------------------------------------------------------------------------


class World:
    """Users, items and tastes of one shop, fixed by the seed; ``week`` draws its purchases."""

    repeat_share = 0.3  # lines that re-buy one of the user's favourites
    taste_share = 0.4  # lines drawn from the user's favourite category
    mean_basket = 5.0
    favourites = 8

    def __init__(self, shop: Shop, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        n_categories = int(np.clip(shop.items // 500, len(CATEGORIES), 200))
        base = np.arange(n_categories) % len(CATEGORIES)
        self.category_names = np.char.add(np.char.add(CATEGORIES[base], "-"), (np.arange(n_categories) // len(CATEGORIES)).astype(str))
        self.item_ids = np.char.add("P", np.char.zfill(np.arange(shop.items).astype(str), 7))
        self.item_category = rng.integers(0, n_categories, shop.items)
        self.item_price = np.round(np.exp(rng.normal(1.0, 0.6, shop.items)), 2)
        popularity = 1.0 / (rng.permutation(shop.items) + 1.0) ** 0.9
        self.popularity_cdf = np.cumsum(popularity) / popularity.sum()
        # Within each category: items sorted by category, and key = category + the item's
        # cumulative share of its category, so one searchsorted on (category + u) draws an item
        # of that category by popularity.
        self.by_category = np.argsort(self.item_category, kind="stable")
        category_of_sorted = self.item_category[self.by_category]
        weights = popularity[self.by_category]
        totals = np.bincount(category_of_sorted, weights=weights, minlength=n_categories)
        within = np.cumsum(weights) - np.concatenate([[0.0], np.cumsum(totals)[:-1]])[category_of_sorted]
        self.category_keys = category_of_sorted + within / totals[category_of_sorted]
        nouns = np.array([noun for c in CATEGORIES for noun in NOUNS[c]])
        noun_of = rng.integers(0, 5, shop.items) + 5 * base[self.item_category]
        self.item_titles = np.char.add(
            np.char.add(np.char.add(ADJECTIVES[rng.integers(0, len(ADJECTIVES), shop.items)], " "),
                        np.char.add(COLOURS[rng.integers(0, len(COLOURS), shop.items)], " ")),
            nouns[noun_of],
        )
        self.user_ids = np.char.add("U", np.char.zfill(np.arange(shop.users).astype(str), 7))
        activity = rng.gamma(1.2, 1.0, shop.users)
        self.activity_cdf = np.cumsum(activity) / activity.sum()
        self.user_country = rng.choice(len(COUNTRIES), shop.users, p=COUNTRY_WEIGHTS)
        self.user_category = np.searchsorted(np.cumsum(totals) / totals.sum(), rng.random(shop.users)).clip(max=n_categories - 1)
        self.user_favourites = self._popular(rng, (shop.users, self.favourites))

    def _popular(self, rng: np.random.Generator, size) -> np.ndarray:
        return np.searchsorted(self.popularity_cdf, rng.random(size)).clip(max=len(self.item_ids) - 1)

    def catalog(self) -> pd.DataFrame:
        return pd.DataFrame({
            "item_id": self.item_ids, "title": self.item_titles,
            "category": self.category_names[self.item_category], "price": self.item_price,
        })

    def week(self, week: int, rows: int) -> pa.Table:
        """``rows`` order lines of one week, as a landing table in the data contract."""
        rng = np.random.default_rng([self.seed, week])
        n_orders = math.ceil(rows / self.mean_basket * 1.1) + 10
        sizes = 1 + rng.poisson(self.mean_basket - 1, n_orders)
        n_orders = int(np.searchsorted(np.cumsum(sizes), rows)) + 1  # enough orders for ``rows`` lines
        order = np.repeat(np.arange(n_orders), sizes[:n_orders])[:rows]
        buyer = np.searchsorted(self.activity_cdf, rng.random(n_orders)).clip(max=len(self.user_ids) - 1)
        days = rng.choice(7, n_orders, p=WEEKDAY_WEIGHTS / WEEKDAY_WEIGHTS.sum())
        seconds = (week * 7 + days) * 86_400 + rng.integers(8 * 3600, 20 * 3600, n_orders)
        user = buyer[order]

        mode = rng.random(rows)
        items = self._popular(rng, rows)
        in_category = (mode >= self.repeat_share) & (mode < self.repeat_share + self.taste_share)
        keys = self.user_category[user[in_category]] + rng.random(int(in_category.sum()))
        items[in_category] = self.by_category[np.searchsorted(self.category_keys, keys).clip(max=len(self.item_ids) - 1)]
        repeat = mode < self.repeat_share
        items[repeat] = self.user_favourites[user[repeat], rng.integers(0, self.favourites, int(repeat.sum()))]

        order_ids = np.char.add(f"W{week:03d}-", np.char.zfill(np.arange(n_orders).astype(str), 7))
        times = (EPOCH.value + seconds.astype(np.int64) * 1_000_000_000)[order]
        return pa.table({
            "user_id": pa.array(self.user_ids[user]),
            "item_id": pa.array(self.item_ids[items]),
            "event_time": pa.array(times, pa.timestamp("ns", tz="UTC")),
            "quantity": pa.array(1 + rng.poisson(2.0, rows)),
            "price": pa.array(self.item_price[items]),
            "order_id": pa.array(order_ids[order]),
            "country": pa.array(COUNTRIES[self.user_country[user]]),
        })


def write_parquet(table: pa.Table, path: Path) -> Path:
    """Beside the target, then renamed: landing/ never shows half a file."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def week_rows(shop: Shop) -> np.ndarray:
    return np.diff(np.linspace(0, shop.history_rows, shop.weeks + 1).astype(np.int64))


def trained_weeks(shop: Shop, trained_rows: int | None) -> int:
    """How many of the newest weeks the bootstrap trains on: all, or enough for ``trained_rows``."""
    if not trained_rows or trained_rows >= shop.history_rows:
        return shop.weeks
    return min(shop.weeks, max(1, int(np.searchsorted(np.cumsum(week_rows(shop)[::-1]), trained_rows)) + 1))


def generate(shop: Shop, home: Path, seed: int, weeks_trained: int) -> Path:
    """The catalog and the history into ``home``/landing, the weeks older than the newest
    ``weeks_trained`` into ``home``/older (the consume phase lands them); returns the update
    batch, written outside landing/ until the update phase."""
    world = World(shop, seed)
    landing, older = home / "landing", home / OLDER
    landing.mkdir(parents=True)
    older.mkdir()
    write_landing_csv(world.catalog(), landing / "catalog-items.csv")
    for week, rows in enumerate(week_rows(shop)):
        folder = landing if week >= shop.weeks - weeks_trained else older
        write_parquet(world.week(week, int(rows)), folder / f"interactions-week{week:03d}.parquet")
    staging = home / "staging"
    staging.mkdir()
    return write_parquet(world.week(shop.weeks, shop.batch_rows), staging / f"interactions-week{shop.weeks:03d}.parquet")


# --- the phases, each in a child process ----------------------------------------------------------


def run_phase(phase: str, result_path: Path) -> int:
    """In the child: run the phase's flow with Settings from the FRESHREC_* environment and
    write its flow run id and outcomes to ``result_path``."""
    from flows.bootstrap import bootstrap
    from flows.continuous_training import continuous_training

    if phase == "consume":
        return consume_older_weeks(result_path)
    flow_fn = {"bootstrap": bootstrap, "update": continuous_training}[phase]
    state = flow_fn(return_state=True)
    completed = state.is_completed()
    result = {
        "flow_run_id": str(state.state_details.flow_run_id),
        "completed": completed,
        "message": state.message,
        "outcomes": [outcome.to_json() for outcome in state.result()] if completed else [],
    }
    result_path.write_text(json.dumps(result, default=str))
    return 0 if completed else 1


def consume_older_weeks(result_path: Path) -> int:
    """In the child: the history older than the champion's, landed as already consumed. The
    product's validate-landing flow validates the files of ``home``/older like any batch; the
    ledger then records them as consumed by the champion and the replay history folds them in
    (``tasks.history.fold``): the state a shop has after months of updates, whose older batches
    an update reads only through the replay history (they all precede the champion's watermark)."""
    from models.settings import Settings
    from flows.validate_landing import validate_landing
    from tasks import ledger
    from tasks.history import fold

    settings = Settings()
    for path in sorted((settings.home / OLDER).glob("*.parquet")):
        path.replace(settings.landing_dir / path.name)
    state = validate_landing(settings, return_state=True)
    if not state.is_completed():
        result_path.write_text(json.dumps({"completed": False, "message": state.message}))
        return 1
    validations = [v for v in state.result() if v.kind == "interactions" and v.rows_accepted]
    engine = ledger.connect(settings.ledger_url)
    champion = ledger.latest_move(engine, settings.registered_model_name, settings.champion_alias)
    ledger.mark_consumed(engine, [v.batch_id for v in validations], champion.to_version)
    sample = fold(settings)
    result_path.write_text(json.dumps({
        "completed": True, "files": len(validations), "rows_accepted": sum(v.rows_accepted for v in validations),
        "replay_reservoir_rows": len(sample.rows), "history_rows_folded": sample.history_rows,
    }))
    return 0


@dataclass(frozen=True)
class ChildRun:
    seconds: float
    peak_rss_mb: float
    exit_code: int
    log_path: Path


def run_child(phase: str, env: dict[str, str], shop_dir: Path, started: float, label: str) -> ChildRun:
    """``python benchmarks/scale.py --phase PHASE`` in ``shop_dir``: its wall time and, from
    os.wait4, its peak RSS alone. Prints a line a minute while it runs."""
    log_path = shop_dir / f"{phase}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--result", str(shop_dir / f"{phase}.json")]
    begun = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=shop_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    next_report = begun + 60
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() >= next_report:
            progress(started, f"{label}: {phase} running for {time.perf_counter() - begun:.0f}s; last log line: {_last_line(log_path)}")
            next_report += 60
        time.sleep(0.5)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return ChildRun(time.perf_counter() - begun, usage.ru_maxrss / 1024, process.returncode, log_path)


def _last_line(path: Path) -> str:
    start = max(0, path.stat().st_size - 65_536)
    with open(path, "rb") as log:
        log.seek(start)
        text = log.read().decode(errors="replace")
    # Progress bars redraw with carriage returns: a log line may follow one on the same line.
    # Read from the middle of the file, the first line is likely cut.
    lines = re.split(r"[\r\n]", text)[1 if start else 0 :]
    lines = [line.strip() for line in lines if line.strip() and not PROGRESS_BAR.search(line)]
    return (lines[-1] if lines else "")[:160]


def child_environment(home: Path, prefect_url: str, settings: dict[str, object]) -> dict[str, str]:
    """The benchmark's environment without any freshrec, MLflow or Prefect settings of the
    caller's, plus the phase's FRESHREC_* settings and the shared Prefect server."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("FRESHREC_", "MLFLOW_", "PREFECT_"))}
    return {
        **inherited,
        "PREFECT_API_URL": prefect_url,
        "PREFECT_HOME": str(home.parent / "prefect-client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "FRESHREC_HOME": str(home),
        **{f"FRESHREC_{name.upper()}": str(value) for name, value in settings.items()},
    }


def phase_settings(shop: Shop, bootstrap_epochs: int, first_update: bool, trained_rows: int | None = None) -> tuple[dict, dict]:
    """(bootstrap settings, update settings): the product's defaults but for these."""
    common = {
        "landing_settle_seconds": 0,  # files are renamed into landing/ whole
        "volume_threshold_rows": max(1, shop.batch_rows // 2),  # the batch alone fires the volume signal
        "min_new_rows": min(1_000, max(1, shop.batch_rows // 2)),
    }
    bootstrap = {**common, "scratch_epochs": bootstrap_epochs}
    if not first_update:
        # The bootstrap's holdout is carried into the next update as new rows: a quarter of a
        # batch is what a steady-state update carries (its own 20% holdout of 1.25 batches).
        bootstrap["holdout_fraction"] = round(min(0.2, shop.batch_rows / (4 * (trained_rows or shop.history_rows))), 6)
    return bootstrap, common


# --- what the runs recorded -------------------------------------------------------------------------


def stage_of(task_name: str) -> str:
    return next((stage for stage, names in STAGES.items() if task_name in names), "other")


def task_name_of(run_name: str) -> str:
    """Prefect names a task run '<task name>-<suffix>'."""
    return run_name.rsplit("-", 1)[0]


async def _update_task_runs(flow_run_id: str) -> tuple[float, list]:
    """The flow run's run time and every task run of it and its subflows (not the task runs
    that only stand for a subflow call in the parent)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId

    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        ids, frontier, placeholders = [flow_run.id], [flow_run.id], set()
        while frontier:
            children = await client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            placeholders |= {child.parent_task_run_id for child in children}
            frontier = [child.id for child in children]
            ids += frontier
        task_runs = []
        for offset in range(0, 100_000, 200):
            page = await client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)), limit=200, offset=offset)
            task_runs += page
            if len(page) < 200:
                break
        return flow_run.total_run_time.total_seconds(), [t for t in task_runs if t.id not in placeholders]


def latest_flow_run_id(flow_name: str) -> str:
    """The newest run of the flow ``flow_name`` on the server (the benchmark runs one at a time)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async def newest():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), sort=FlowRunSort.START_TIME_DESC, limit=1)
            return str(runs[0].id)

    return asyncio.run(newest())


def update_stages(flow_run_id: str, timeout: float = 60.0) -> tuple[float, dict[str, float], dict[str, float], object]:
    """(flow run seconds, seconds per stage, seconds per "other" task, the train task run). The
    server records task runs from events: read until every one has finished."""
    deadline = time.monotonic() + timeout
    while True:
        flow_seconds, task_runs = asyncio.run(_update_task_runs(flow_run_id))
        if all(t.state is not None and t.state.is_final() for t in task_runs) or time.monotonic() > deadline:
            break
        time.sleep(2)
    stages = {stage: 0.0 for stage in (*STAGES, "other")}
    others: dict[str, float] = {}
    for task_run in task_runs:
        name, seconds = task_name_of(task_run.name), task_run.total_run_time.total_seconds()
        stages[stage_of(name)] += seconds
        if stage_of(name) == "other":
            others[name] = others.get(name, 0.0) + seconds
    train = next((t for t in task_runs if task_name_of(t.name) == "train-challenger"), None)
    return flow_seconds, stages, others, train


async def _task_log(task_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    async with get_client() as client:
        return [log.message for log in await client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])), limit=200)]


def epoch_seconds(train_task_run) -> list[float]:
    """Seconds of each epoch's SGD steps, from the train task's 'epoch N: ..., seconds S, ...' lines."""
    if train_task_run is None:
        return []
    lines = asyncio.run(_task_log(train_task_run.id))
    return [float(m[1]) for m in (re.search(r"^epoch \d+: .*\bseconds ([0-9.e+-]+)", line) for line in lines) if m]


def training_run(home: Path, run_id: str) -> dict:
    """The MLflow training run's rows, epochs and seconds."""
    from mlflow import MlflowClient

    from models.settings import Settings

    run = MlflowClient(Settings(home=home).mlflow_tracking_uri).get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    return {
        "new_rows": int(params["new_rows"]),
        "replay_rows": int(params["replay_rows"]),
        "holdout_rows": int(params["holdout_rows"]),
        "epochs": int(params["epochs"]),
        "train_seconds": float(metrics["train_seconds"]),
    }


# --- one shop, end to end ---------------------------------------------------------------------------


def progress(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)


def fresh_dir(path: Path) -> Path:
    """An empty folder; one this benchmark made before is deleted first, any other is refused."""
    if path.exists():
        if not (path / MARKER).exists():
            raise SystemExit(f"error: {path} exists and was not made by this benchmark: choose another --work")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by benchmarks/scale.py; its next run deletes this folder\n")
    return path


class PhaseFailed(RuntimeError):
    def __init__(self, message: str, child: ChildRun | None = None) -> None:
        super().__init__(message)
        self.child = child


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name
    return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


def phase(name: str, env: dict, shop_dir: Path, started: float, label: str) -> tuple[ChildRun, dict]:
    progress(started, f"{label}: {name} ...")
    child = run_child(name, env, shop_dir, started, label)
    result_path = shop_dir / f"{name}.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    if child.exit_code != 0 or not result.get("completed"):
        why = result.get("message") or _exit_reason(child.exit_code)
        tail = child.log_path.read_text(errors="replace")[-3000:]
        raise PhaseFailed(f"{name} failed after {child.seconds:.0f}s, peak RSS {child.peak_rss_mb:.0f} MB: {why}\n--- {child.log_path} (tail)\n{tail}", child)
    progress(started, f"{label}: {name} done in {child.seconds:.1f}s, peak RSS {child.peak_rss_mb:,.0f} MB")
    return child, result


def measure(shop: Shop, work: Path, prefect_url: str, args: argparse.Namespace, started: float) -> dict:
    """Generate, bootstrap and update one shop; the measurements of its update. A phase that
    fails leaves what was measured until then, and an "error"."""
    shop_dir = fresh_dir(work / shop.name)
    home = shop_dir / "freshrec"
    weeks_trained = trained_weeks(shop, args.trained_history_rows)
    trained_rows = int(week_rows(shop)[shop.weeks - weeks_trained :].sum())
    bootstrap_settings, update_settings = phase_settings(shop, args.bootstrap_epochs, args.first_update, trained_rows)
    entry = {
        "shop": shop.name, "history_rows": shop.history_rows, "users": shop.users, "items": shop.items,
        "batch_rows": shop.batch_rows, "history_files": shop.weeks,
        "bootstrap_trained_rows": trained_rows, "bootstrap_trained_files": weeks_trained,
        "update_kind": "first after the bootstrap" if args.first_update else "steady state: carries a quarter batch of the bootstrap's holdout",
        "bootstrap_settings": bootstrap_settings, "update_settings": update_settings,
        "code": code_state(),  # the product changes between runs: say which one was measured
    }
    progress(started, f"{shop.label}: generating {shop.weeks} weekly files + a batch of {shop.batch_rows:,} rows in {shop_dir}")
    begun = time.perf_counter()
    batch_path = generate(shop, home, args.seed, weeks_trained)
    entry["generate_seconds"] = round(time.perf_counter() - begun, 1)
    current = "bootstrap"
    try:
        boot, boot_result = phase("bootstrap", child_environment(home, prefect_url, bootstrap_settings), shop_dir, started, shop.label)
        trained = boot_result["outcomes"][-1]
        if not trained.get("promoted"):
            raise PhaseFailed(f"the bootstrap registered no champion: {trained.get('reasons')}", boot)
        entry |= {"bootstrap_seconds": round(boot.seconds, 1), "bootstrap_peak_rss_mb": round(boot.peak_rss_mb, 1)}
        if weeks_trained < shop.weeks:
            current = "consume"
            consume, consumed = phase("consume", child_environment(home, prefect_url, bootstrap_settings), shop_dir, started, shop.label)
            entry |= {
                "consumed_untrained_files": consumed["files"], "consumed_untrained_rows": consumed["rows_accepted"],
                "replay_reservoir_rows": consumed["replay_reservoir_rows"], "history_rows_folded": consumed["history_rows_folded"],
                "consume_seconds": round(consume.seconds, 1), "consume_peak_rss_mb": round(consume.peak_rss_mb, 1),
            }
        batch_path.replace(home / "landing" / batch_path.name)
        current = "update"
        update, update_result = phase("update", child_environment(home, prefect_url, update_settings), shop_dir, started, shop.label)
        entry |= {"update_seconds": round(update.seconds, 1), "peak_rss_mb": round(update.peak_rss_mb, 1)}
        entry |= update_measurements(home, update_result["flow_run_id"], update_result["outcomes"], batch_path.name)
    except PhaseFailed as error:
        print(f"error: {shop.label}: {error}", file=sys.stderr)
        entry["error"] = str(error).splitlines()[0]
        if error.child is not None:
            entry |= {f"{current}_seconds_until_failure": round(error.child.seconds, 1), f"{current}_peak_rss_mb": round(error.child.peak_rss_mb, 1)}
        if current == "update":  # where its time went, as far as the server heard
            flow_seconds, stages, others, _ = update_stages(latest_flow_run_id("continuous-training"), timeout=10)
            entry["stages_until_failure"] = {stage: round(seconds, 1) for stage, seconds in stages.items()}
        return entry  # the shop's folder stays, with the phase's log
    if not args.keep:
        shutil.rmtree(shop_dir)
    return entry


def update_measurements(home: Path, flow_run_id: str, outcomes: list[dict], batch_name: str) -> dict:
    """Stages from the update's Prefect task runs, the decision, and the training's rows and
    throughput from its MLflow run."""
    flow_seconds, stages, others, train_task = update_stages(flow_run_id)
    outcome = next(o for o in outcomes if o["batch"] == batch_name)
    measured = {
        "update_flow_seconds": round(flow_seconds, 1),
        "stages": {stage: round(seconds, 1) for stage, seconds in stages.items()},
        "other_tasks": {name: round(seconds, 1) for name, seconds in sorted(others.items(), key=lambda kv: -kv[1])},
        "batch_rows_accepted": outcome["rows_accepted"],
        "decision": "update" if outcome["update"] else "skip",
        "promoted": outcome["promoted"],
        "reasons": outcome["reasons"],
        "challenger_recall": outcome["challenger_recall"],
        "champion_recall": outcome["champion_recall"],
    }
    if outcome["update"] and outcome["mlflow_run_id"]:
        training = training_run(home, outcome["mlflow_run_id"])
        trained_rows = (training["new_rows"] + training["replay_rows"]) * training["epochs"]
        epochs = epoch_seconds(train_task)
        measured |= {
            "training": training | {"epoch_seconds": [round(e, 2) for e in epochs]},
            "train_interactions_per_second": round(trained_rows / training["train_seconds"]),
            "sgd_interactions_per_second": round(trained_rows / sum(epochs)) if epochs else None,
        }
    return measured


# --- results ------------------------------------------------------------------------------------------


def machine() -> str:
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {torch.get_num_threads()} threads, {memory:.0f} GiB RAM, {device}, torch {torch.__version__}"


def code_state() -> dict:
    """The commit measured and the files that differed from it (read-only git)."""
    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=RESULTS_DIR.parents[1], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("diff", "--name-only", "HEAD").splitlines()  # tracked files, staged or not
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes": changed}


def write_results(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)


def plot(sizes: list[dict], path: Path) -> None:
    """Update seconds per stage (stacked) and peak RSS, against history rows."""
    from matplotlib.figure import Figure

    done = [s for s in sizes if "stages" in s]
    if not done:
        return
    figure = Figure(figsize=(13, 4.5), layout="constrained")
    time_axes, memory_axes = figure.subplots(1, 2)
    positions = np.arange(len(done))
    labels = [f"{_short(s['history_rows'])} rows\n{_short(s['users'])} users\n{_short(s['items'])} items" for s in done]
    bottom = np.zeros(len(done))
    for stage in (*STAGES, "other"):
        values = np.array([s["stages"][stage] for s in done])
        time_axes.bar(positions, values, bottom=bottom, label=stage)
        bottom += values
    time_axes.plot(positions, [s["update_seconds"] for s in done], "k_", markersize=30, label="whole update (process)")
    time_axes.set(xticks=positions, xticklabels=labels, ylabel="seconds", title=f"one update ({_short(done[0]['batch_rows'])}-row batch): time per stage")
    time_axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    rows = [s["history_rows"] for s in done]
    memory_axes.plot(rows, [s["peak_rss_mb"] / 1024 for s in done], "o-", label="update")
    memory_axes.plot(rows, [s["bootstrap_peak_rss_mb"] / 1024 for s in done], "s--", label="bootstrap")
    memory_axes.set(xscale="log", xlabel="history rows", ylabel="peak RSS (GiB)", ylim=(0, None), title="peak resident memory of each phase's process")
    memory_axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def table(sizes: list[dict]) -> str:
    header = ("shop", "bootstrap s", "update s", *STAGES, "other", "train int/s", "peak RSS MB", "decision")
    rows = [header]
    failed = []
    for s in sizes:
        if "error" in s:
            failed.append(f"{s['shop']}: failed: {s['error']}")
            continue
        rows.append((
            s["shop"], f"{s['bootstrap_seconds']:.0f}", f"{s['update_seconds']:.0f}", *(f"{s['stages'][k]:.1f}" for k in (*STAGES, "other")),
            f"{s.get('train_interactions_per_second') or 0:,}", f"{s['peak_rss_mb']:,.0f}",
            s["decision"] + (", promoted" if s["promoted"] else ", not promoted"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + failed)


# --- command line -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", "--sizes", action="append", default=None, metavar="SHOP",
                        help=f"{', '.join(SHOPS)} or ROWS:USERS:ITEMS (e.g. 200k:20k:5k); comma-separated or repeated (default: all three)")
    parser.add_argument("--batch-rows", type=_count, default=1_000_000, help="rows of the update batch (default 1M)")
    parser.add_argument("--smoke", action="store_true", help=f"one tiny shop {':'.join(map(_short, SMOKE))}, batch {_short(SMOKE_BATCH_ROWS)}")
    parser.add_argument("--bootstrap-epochs", type=int, default=1, help="scratch_epochs of the bootstrap (default 1)")
    parser.add_argument("--first-update", action="store_true",
                        help="bootstrap with the default holdout (20%% of history, carried into the update): the first update, not a steady one")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "freshrec-scale", help="state of every run (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep each shop's folder (landing, accepted, MLflow store) after measuring it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json", help="results (default: %(default)s); the figure goes beside it")
    parser.add_argument("--trained-history-rows", type=_count, default=None, metavar="ROWS",
                        help="the bootstrap trains on the newest weeks holding about ROWS rows; the older weeks are then validated "
                        "and recorded as consumed by the champion, and folded into the replay history (default: it trains on all)")
    parser.add_argument("--phase", choices=("bootstrap", "consume", "update"), help=argparse.SUPPRESS)  # in a child process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def shops_of(args: argparse.Namespace) -> list[Shop]:
    if args.smoke:
        rows, users, items = SMOKE
        return [Shop("smoke", rows, users, items, min(args.batch_rows, SMOKE_BATCH_ROWS))]
    names = [name for option in (args.shop or [",".join(SHOPS)]) for name in option.split(",") if name]
    return [parse_shop(name, args.batch_rows) for name in names]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        return run_phase(args.phase, args.result)
    from flows.servers import start_prefect, stop, wait_ready

    # Only the benchmark's own settings reach its children and its reads of their stores.
    for name in [n for n in os.environ if n.startswith("FRESHREC_") or n in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")]:
        del os.environ[name]
    started, shops = time.perf_counter(), shops_of(args)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"machine": machine(), "command": command.strip(), "fields": FIELDS, "sizes": []}
    progress(started, f"starting a Prefect server on loopback (state in {work / 'servers'})")
    server = start_prefect(fresh_dir(work / "servers"), free_port())
    try:
        wait_ready(server, timeout=180)
        os.environ["PREFECT_API_URL"] = server.url  # this process reads the update's task runs
        for shop in shops:
            result["sizes"].append(measure(shop, work, server.url, args, started))
            write_results(args.out, result)  # after every shop: a run that dies keeps the finished ones
            plot(result["sizes"], args.out.with_suffix(".png"))
            progress(started, f"{shop.label}: written to {args.out}")
    finally:
        stop(server)
    print()
    print(table(result["sizes"]))
    progress(started, "done")
    return 0 if all("error" not in s for s in result["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
