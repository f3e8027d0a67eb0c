"""Assembling training data from the accepted area, training, and evaluating on the same slice."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from data_checks.contract import empty_interactions, with_contract_columns
from models.settings import Settings
from models.evaluate import SliceMetrics, evaluate
from models.files import read_parquet, write_parquet
from models.metrics import bootstrap_ci
from models.text import catalog_title_vectors
from models.recommender import Recommender, TrainConfig
from models.train import calibrate_memory_weight, event_weights, pick_device, prepare, remember, train
from tasks import history, ledger
from tasks.logs import run_logger
from tasks.gates import PromotionEvidence
from tasks.ingest import load_catalog
from tasks.tracking import ChampionInfo, aliased_versions, cached_checkpoint_path


@dataclass
class TrainingData:
    new: pd.DataFrame  # rows the champion has not been trained on, minus the holdout
    replay: pd.DataFrame  # earlier rows sampled again so the update does not forget
    holdout: pd.DataFrame  # the newest slice of the new rows, for challenger and champion alike
    eval_users: pd.Index  # users known before the holdout: the ones both models are scored on
    catalog: pd.DataFrame
    batch_ids: list[int]  # ledger batches this training consumes
    # Earlier accepted rows this update does not replay: both models are scored on them, and a
    # challenger that lost too much there forgot (see settings.max_forgetting).
    historical: pd.DataFrame = field(default_factory=empty_interactions)
    new_items: frozenset[str] = frozenset()  # holdout items nobody bought before the holdout
    notes: list[str] = field(default_factory=list)  # what a person should know about this data (logged as warnings)

    @property
    def rows(self) -> int:
        """New rows: trained on or held out."""
        return len(self.new) + len(self.holdout)

    def data_range(self) -> dict[str, str]:
        def span(frame: pd.DataFrame) -> tuple[str, str]:
            if frame.empty:
                return "", ""
            return str(frame["event_time"].min()), str(frame["event_time"].max())

        (train_from, train_until), (holdout_from, holdout_until) = span(self.new), span(self.holdout)
        return {
            "train_from": train_from,
            "trained_until": train_until,
            "holdout_from": holdout_from,
            "holdout_until": holdout_until,
        }


@dataclass(frozen=True)
class Challenger:
    checkpoint_path: str
    init_from: str
    train_seconds: float
    epochs: int  # epochs run (early stopping may end before the budget)
    best_epoch: int  # the epoch whose weights were kept (0: the starting weights)
    final_loss: float
    device: str  # where it trained, as `trained_on` says it


@dataclass(frozen=True)
class SliceComparison:
    """Challenger and champion on one slice: the same rows, users and K for both."""

    name: str  # newest | historical | cold_start
    rows: int
    challenger: SliceMetrics
    champion: SliceMetrics | None


@dataclass(frozen=True)
class Evaluation:
    slices: dict[str, SliceComparison]
    metric: str  # the primary metric
    challenger_interval: tuple[float, float]  # bootstrap interval of the challenger's mean on "newest"
    champion_interval: tuple[float, float] | None = None
    gain_interval: tuple[float, float] | None = None  # of the paired per-user difference
    target_event: str = "purchase"  # the event every slice was scored on

    @property
    def challenger(self) -> SliceMetrics:
        return self.slices["newest"].challenger

    @property
    def champion(self) -> SliceMetrics | None:
        return self.slices["newest"].champion

    @property
    def holdout_rows(self) -> int:
        return self.slices["newest"].rows

    def evidence(self, init_from: str) -> PromotionEvidence:
        """The gate's input; ``init_from`` says where the challenger's weights started."""
        historical = self.slices.get("historical")
        usable = historical is not None and historical.challenger.users > 0 and historical.champion is not None
        return PromotionEvidence(
            metric=self.metric,
            k=self.challenger.k,
            challenger=self.challenger.value(self.metric),
            champion=self.champion.value(self.metric) if self.champion is not None else None,
            gain_interval=self.gain_interval,
            historical_challenger=historical.challenger.value(self.metric) if usable else None,
            historical_champion=historical.champion.value(self.metric) if usable else None,
            warm_started=init_from == "champion",
        )

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: ``<model>.<slice>.<metric>``, the intervals and the slice sizes."""
        flat: dict[str, float] = {}
        for name, comparison in self.slices.items():
            flat[f"{name}.rows"] = comparison.rows
            for model, metrics in (("challenger", comparison.challenger), ("champion", comparison.champion)):
                if metrics is not None:
                    flat |= {f"{model}.{name}.{key}": value for key, value in metrics.summary().items()}
        intervals = (("challenger", self.challenger_interval), ("champion", self.champion_interval), ("gain", self.gain_interval))
        for model, interval in intervals:
            if interval is not None:
                flat |= {f"{model}.newest.{self.metric}.ci_low": interval[0], f"{model}.newest.{self.metric}.ci_high": interval[1]}
        return flat


def split_at_watermark(history: pd.DataFrame, watermark: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows up to the champion's watermark, rows after it). Rows after it are new to the
    champion: its own holdout, which it never trained on, is carried into the next update."""
    after = history["event_time"] > watermark
    return history[~after], history[after]


def holdout_split(new: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The newest ``fraction`` of rows by time is held out; rows at the cut's timestamp go with it."""
    new = new.sort_values("event_time", kind="stable", ignore_index=True)
    n_holdout = math.ceil(len(new) * fraction)
    if n_holdout == 0:
        return new, new.iloc[0:0]
    cut = new["event_time"].iloc[len(new) - n_holdout]
    return new[new["event_time"] < cut], new[new["event_time"] >= cut]


def _assemble(
    settings: Settings, champion: ChampionInfo | None, until: pd.Timestamp | None = None, through_batch_id: int | None = None
) -> TrainingData:
    """New rows (pending batches plus the champion's own holdout), a replay sample of history,
    and the newest slice held out. With ``until``, only batches whose events all precede it;
    with ``through_batch_id``, only batches up to that one.

    A retrain (settings.init_from "scratch") reads the whole consumed history back. A fine-tune
    reads only the new batches, the consumed batches with rows after the champion's watermark,
    and the bounded history sample of tasks/history.py: its cost follows the new data."""
    engine = ledger.connect(settings.ledger_url)
    pending = [
        b for b in ledger.unconsumed_batches(engine, through_batch_id)
        if until is None or (b.max_event_time is not None and pd.Timestamp(b.max_event_time) < until)
    ]
    pending_rows = [read_accepted(b.accepted_path, settings) for b in pending if b.accepted_path]
    if settings.init_from == "scratch":
        return _assemble_from_all_history(settings, champion, engine, pending, pending_rows)
    watermark = champion.trained_until if champion is not None else None
    carried_over = empty_interactions()
    if watermark is not None:
        # Rows after the watermark (the champion's own holdout) are new to it; only the newest
        # consumed batches can hold them.
        later = [
            b for b in ledger.consumed_batches(engine)
            if b.accepted_path and (b.max_event_time is None or pd.Timestamp(b.max_event_time) > watermark)
        ]
        carried_over = _concat([split_at_watermark(read_accepted(b.accepted_path, settings), watermark)[1] for b in later])
    new = _concat([carried_over, *pending_rows])
    train_part, holdout = holdout_split(new, settings.holdout_fraction)
    sample = history.fold(settings)
    types = [t for t, weight in settings.event_weights().items() if weight > 0]
    pool = sample.head(watermark, types)
    n_replay = int(len(train_part) * settings.replay_ratio)
    # Forgetting is measured on what the update does not replay, drawn with the replay's
    # recency weighting: the recent past users still act on, not the oldest rows that replay
    # left behind. The sample's head is the replay, the rows after it the forgetting slice.
    replay = pool.iloc[:n_replay]
    historical = pool.iloc[n_replay : n_replay + settings.forgetting_slice_rows]
    if len(replay) == len(pool):
        # Replay took every row: the slice is drawn from the history it replayed (a sample of all
        # of it, as a retrain's is), so the gate still compares the two models on older data.
        historical = pool.iloc[: settings.forgetting_slice_rows]
    notes = []
    if len(pool) < n_replay + settings.forgetting_slice_rows and not sample.complete:
        notes.append(
            f"the replay history holds {len(pool):,} usable rows: {len(replay):,} replayed (asked {n_replay:,}) and "
            f"{len(historical):,} for the forgetting slice (asked {settings.forgetting_slice_rows:,}); raise "
            f"replay_reservoir_rows ({settings.replay_reservoir_rows:,}) to replay more"
        )
    known_users = sample.known_users(watermark, types).union(pd.Index(train_part["user_id"].unique()))
    known_items = set(sample.known_items(watermark, types)) | set(train_part["item_id"])
    return TrainingData(
        new=train_part.reset_index(drop=True),
        replay=replay.reset_index(drop=True),
        holdout=holdout.reset_index(drop=True),
        eval_users=known_users,
        catalog=load_catalog(settings),
        batch_ids=[b.id for b in pending],
        historical=historical.sort_values("event_time", kind="stable").reset_index(drop=True),
        new_items=frozenset(set(holdout["item_id"]) - known_items),
        notes=notes,
    )


def _assemble_from_all_history(
    settings: Settings, champion: ChampionInfo | None, engine, pending: list, pending_rows: list[pd.DataFrame]
) -> TrainingData:
    """A retrain's data: it trains on every consumed row again, so it reads them all."""
    history = _concat([read_accepted(b.accepted_path, settings) for b in ledger.consumed_batches(engine) if b.accepted_path])
    carried_over = history.iloc[0:0]
    if champion is not None:
        history, carried_over = split_at_watermark(history, champion.trained_until)
    new = _concat([carried_over, *pending_rows])
    train_part, holdout = holdout_split(new, settings.holdout_fraction)
    # The historical slice is history it trains on again: logged, not gated (PromotionEvidence.warm_started).
    historical = replay_sample(
        history, settings.forgetting_slice_rows, settings.replay_half_life_days,
        train_part["event_time"].min() if len(train_part) else None, settings.seed,
    )
    known_items = set(history["item_id"]) | set(train_part["item_id"])
    return TrainingData(
        new=train_part.reset_index(drop=True),
        replay=history.reset_index(drop=True),
        holdout=holdout.reset_index(drop=True),
        eval_users=pd.Index(pd.concat([history["user_id"], train_part["user_id"]]).unique()),
        catalog=load_catalog(settings),
        batch_ids=[b.id for b in pending],
        historical=historical.sort_values("event_time", kind="stable").reset_index(drop=True),
        new_items=frozenset(set(holdout["item_id"]) - known_items),
    )


def read_accepted(path: str | Path, settings: Settings) -> pd.DataFrame:
    """A batch's accepted rows that training uses: those of an event type whose weight is above
    0, with every contract column (files accepted before a column was optional lack it)."""
    rows = with_contract_columns(read_parquet(path))
    return rows[event_weights(rows, settings.event_weights()) > 0]


def replay_sample(
    history: pd.DataFrame, n: int, half_life_days: float | None, now: pd.Timestamp | None, seed: int
) -> pd.DataFrame:
    """``n`` rows of history (all of it when it has fewer), drawn without replacement: uniformly,
    or with ``half_life_days`` weighted by recency, a row ``half_life_days`` older than ``now``
    half as likely as a row at ``now``."""
    n = min(n, len(history))
    if n <= 0:
        return history.iloc[0:0]
    weights = None
    if half_life_days and now is not None:
        age_days = (now - history["event_time"]).dt.total_seconds().clip(lower=0) / 86_400
        weights = np.power(0.5, age_days / half_life_days).to_numpy()
    return history.sample(n=n, weights=weights, random_state=seed)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate accepted frames; with none, an empty frame of the contract's types."""
    frames = [f for f in frames if len(f)]
    if frames:
        return pd.concat(frames, ignore_index=True)
    return empty_interactions()


def train_config(settings: Settings, init_from: str) -> TrainConfig:
    scratch = init_from == "scratch"
    return TrainConfig(
        init_from=init_from,
        epochs=settings.scratch_epochs if scratch else settings.finetune_epochs,
        max_steps=None if scratch else settings.finetune_max_steps,
        learning_rate=settings.scratch_learning_rate if scratch else settings.finetune_learning_rate,
        patience=settings.early_stopping_patience,
        batch_size=settings.batch_size,
        temperature=settings.temperature,
        dim=settings.embedding_dim,
        history_length=settings.history_length,
        repeat_slots=settings.repeat_memory,
        basket_decay=settings.basket_decay,
        neighbours=settings.memory_neighbours,
        neighbour_share=settings.neighbour_share,
        popularity_share=settings.popularity_share,
        popularity_half_life_days=settings.popularity_half_life_days,
        event_weights=settings.event_weights(),
        target_event=settings.target_event,
        recommend_consumed=settings.recommend_consumed,
        device=settings.device,
        seed=settings.seed,
    )


def starting_point(settings: Settings, champion: ChampionInfo | None) -> tuple[str, Recommender | None]:
    """(init_from, the model to start from): the one switch of settings.init_from."""
    if settings.init_from == "checkpoint":
        return "checkpoint", Recommender.load(settings.init_checkpoint_path)
    if settings.init_from == "champion" and champion is not None:
        return "champion", Recommender.load(champion.checkpoint_path)
    return "scratch", None


def training_key(data: TrainingData, champion: ChampionInfo | None, config: TrainConfig) -> str:
    """Names a training job by what it trains on and from: a retry of the same job finds the
    checkpoint of the attempt it replaces; any other job starts fresh."""
    job = {
        "batches": data.batch_ids,
        "champion": champion.version if champion else None,
        "rows": [len(data.new), len(data.replay), len(data.holdout)],
        "range": data.data_range(),
        "config": asdict(config),
    }
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fit(data: TrainingData, champion: ChampionInfo | None, settings: Settings, on_epoch_end=None) -> Challenger:
    """Train a challenger from the starting point settings.init_from names, with a checkpoint
    each epoch (a retry resumes there) and early stopping on the held-out slice."""
    init_from, start = starting_point(settings, champion)
    config = train_config(settings, init_from)
    vectors = catalog_title_vectors(data.catalog, settings.title_cache_dir) if settings.use_title_text else None
    started = time.perf_counter()
    if start is None:  # from scratch: everything is new, the replay sample is all history
        rows = pd.concat([data.replay, data.new], ignore_index=True)
        recommender = prepare(rows, data.catalog, config, None, title_vectors=vectors)
    else:
        rows = pd.concat([data.new, data.replay], ignore_index=True)
        recommender = prepare(data.new, data.catalog, config, start, replay=data.replay, title_vectors=vectors)
    validate = None
    if len(data.holdout):
        def validate(model: Recommender) -> float:
            return evaluate(
                model, data.holdout, data.eval_users, settings.eval_k, target_event=settings.target_event, max_users=settings.eval_max_users,
            ).value(settings.primary_metric)

    key = training_key(data, champion, config)
    progress_path = settings.checkpoints_dir / f"training-{key}.pt"
    if settings.train_processes > 1:
        recommender = train_with_torchrun(recommender, rows, data, settings, settings.checkpoints_dir / f"torchrun-{key}")
        for record in recommender.training.history if on_epoch_end else []:
            on_epoch_end(record)
    else:
        recommender = train(recommender, rows, validate=validate, checkpoint_path=progress_path, on_epoch_end=on_epoch_end)
    if validate is not None and recommender.model.args.repeat_slots:
        calibrate_memory_weight(recommender, validate)
    seconds = time.perf_counter() - started
    path = recommender.save(settings.checkpoints_dir / f"challenger-{key}.pt")
    progress_path.unlink(missing_ok=True)  # finished: the challenger file is the result
    return Challenger(
        checkpoint_path=str(path),
        init_from=init_from,
        train_seconds=seconds,
        epochs=recommender.training.epochs_done,
        best_epoch=recommender.training.best_epoch,
        final_loss=recommender.training.history[-1]["loss"] if recommender.training.history else float("nan"),
        device=trained_on(config.device, settings.train_processes),
    )


def trained_on(requested: str, processes: int = 1) -> str:
    """The device ``requested`` ("auto", "cpu", "cuda", "cuda:1") resolves to here, in words:
    "cpu", "cuda:0 (NVIDIA H100 80GB HBM3)"; with more than one process, how many under torchrun."""
    device = pick_device(requested)
    name = device.type
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return name if processes == 1 else f"{name}, {processes} processes under torchrun"


def train_with_torchrun(recommender: Recommender, rows: pd.DataFrame, data: TrainingData, settings: Settings, work: Path) -> Recommender:
    """Train under `torchrun` with ``settings.train_processes`` processes (models/distributed.py):
    the prepared model, the rows and the held-out slice go to ``work``, the trained model comes
    back. The launch's output (rank 0's progress bar and epochs) is passed through as it comes."""
    work.mkdir(parents=True, exist_ok=True)
    prepared, out = recommender.save(work / "prepared.pt"), work / "trained.pt"
    write_parquet(rows[[c for c in ("user_id", "item_id", "event_type") if c in rows]], work / "rows.parquet")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={settings.train_processes}",
        "-m", "models.distributed", str(prepared), str(work / "rows.parquet"), str(out), "--k", str(settings.eval_k),
        "--max-users", str(settings.eval_max_users), "--metric", settings.primary_metric,
    ]
    if len(data.holdout):
        write_parquet(data.holdout, work / "holdout.parquet")
        write_parquet(pd.DataFrame({"user_id": data.eval_users.astype(str)}), work / "eval_users.parquet")
        command += ["--holdout", str(work / "holdout.parquet"), "--eval-users", str(work / "eval_users.parquet")]
    if recommender.config.device == "cpu":
        command += ["--backend", "gloo"]
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as launch:
        for line in launch.stdout:
            sys.stderr.write(line)
            tail.append(line)
    if launch.returncode != 0:
        raise RuntimeError(
            f"torchrun with {settings.train_processes} processes failed (exit {launch.returncode}): {' '.join(command)}\n"
            + "".join(tail)
        )
    trained = Recommender.load(out)
    trained.config.device = recommender.config.device
    shutil.rmtree(work)  # the trained model is in memory; the challenger file is written next
    return trained


def _compare(challenger: Challenger, champion: ChampionInfo | None, data: TrainingData, settings: Settings) -> Evaluation:
    """Both models on the same slices: the newest holdout, the historical slice and the holdout's
    purchases of new items (cold start), with bootstrap intervals on the primary metric. Every
    slice is scored on its events of settings.target_event."""
    k, metric = settings.eval_k, settings.primary_metric
    models = {"challenger": Recommender.load(challenger.checkpoint_path)}
    if champion is not None:
        models["champion"] = Recommender.load(champion.checkpoint_path)
    catalog_size = len(models["challenger"].items) - 1  # the challenger's items include the champion's
    frames = {
        "newest": data.holdout,
        "historical": data.historical,
        "cold_start": data.holdout[data.holdout["item_id"].isin(data.new_items)],
    }
    slices = {}
    for name, frame in frames.items():
        scored = {}
        for model, recommender in models.items():
            # The historical slice asks what the fine-tune forgot: the towers alone. The basket
            # memory is folded in exactly and weighs older baskets less by design, so with it
            # an update "loses" old purchases it never forgot.
            with recommender.model.without_memory() if name == "historical" else nullcontext():
                scored[model] = evaluate(recommender, frame, data.eval_users, k, catalog_size, settings.target_event, settings.eval_max_users)
        slices[name] = SliceComparison(name, len(frame), scored["challenger"], scored.get("champion"))
    newest = slices["newest"]
    ci = dict(confidence=settings.confidence_level, n_resamples=settings.bootstrap_resamples, seed=settings.seed)
    challenger_values = newest.challenger.per_user.get(metric, np.empty(0))
    champion_interval = gain_interval = None
    if newest.champion is not None:
        champion_values = newest.champion.per_user.get(metric, np.empty(0))
        champion_interval = bootstrap_ci(champion_values, **ci)
        gain_interval = bootstrap_ci(challenger_values - champion_values, **ci)  # same users, same order
    return Evaluation(slices, metric, bootstrap_ci(challenger_values, **ci), champion_interval, gain_interval, settings.target_event)


def _remember_holdout(challenger: Challenger, data: TrainingData) -> Challenger:
    """The evaluated challenger with the held-out rows added to its user histories (not to its
    weights: the next update trains on them), so the model that serves knows every user's
    latest purchases. Run after evaluation: scored with them, the holdout would leak."""
    if data.holdout.empty:
        return challenger
    served = remember(Recommender.load(challenger.checkpoint_path), data.holdout, data.catalog)
    path = served.save(Path(challenger.checkpoint_path).with_suffix(".served.pt"))
    return replace(challenger, checkpoint_path=str(path))


# --- retention: the model files a run leaves behind -------------------------------------------------

# What freshrec writes in checkpoints/, by kind (fit, remember_holdout, train_with_torchrun).
CHECKPOINT_KINDS = {
    "challenger": re.compile(r"challenger-[0-9a-f]+\.pt"),
    "served": re.compile(r"challenger-[0-9a-f]+\.served\.pt"),
    "progress": re.compile(r"training-[0-9a-f]+\.pt"),
    "torchrun": re.compile(r"torchrun-[0-9a-f]+"),
}
DELETING = ".deleting-"  # a folder is renamed to .<name>.deleting-<pid>-<random> before it is removed
UNFINISHED = "unfinished deletion"  # the kind of such a folder left by a pruning that died


@dataclass(frozen=True)
class ModelFile:
    path: Path
    kind: str  # a CHECKPOINT_KINDS key, "champion" (an entry of the champion cache) or UNFINISHED
    mtime: float  # its newest change (a folder: of anything in it)
    size: int  # bytes (a folder: its files together)


@dataclass(frozen=True)
class Pruning:
    deleted: list[ModelFile]
    failed: list[tuple[ModelFile, str]]  # and why


def files_to_prune(files: list[ModelFile], protected: set[Path], keep: int, in_use_since: float) -> list[ModelFile]:
    """The model files to delete, oldest first: of each kind those beyond the newest ``keep`` by
    mtime, except a protected path (or a folder holding one) and anything changed since
    ``in_use_since`` (a run may be using it). Of an unfinished deletion none is kept."""
    doomed = []
    for kind in {f.kind for f in files}:
        newest_first = sorted((f for f in files if f.kind == kind), key=lambda f: (f.mtime, str(f.path)), reverse=True)
        doomed += [
            f for f in newest_first[0 if kind == UNFINISHED else keep:]
            if f.mtime < in_use_since and not any(p == f.path or f.path in p.parents for p in protected)
        ]
    return sorted(doomed, key=lambda f: (f.mtime, str(f.path)))


def model_files(settings: Settings, champion_cache: bool = True) -> list[ModelFile]:
    """The files and folders freshrec writes in checkpoints/ and (with ``champion_cache``) the
    champion cache entries of settings.registered_model_name; links and other names are left out."""
    places = [(settings.checkpoints_dir, CHECKPOINT_KINDS)]
    if champion_cache:
        places.append((settings.home / "cache", {"champion": re.compile(re.escape(settings.registered_model_name) + r"-v\d+")}))
    found = []
    for folder, kinds in places:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            kind = next((k for k, pattern in kinds.items() if pattern.fullmatch(entry.name)), None)
            if entry.name.startswith(".") and DELETING in entry.name:
                kind = UNFINISHED
            if kind is None or entry.is_symlink():
                continue
            try:
                found.append(ModelFile(Path(entry.path), kind, *_newest_change_and_size(Path(entry.path))))
            except OSError:  # removed meanwhile
                continue
    return found


def _newest_change_and_size(path: Path) -> tuple[float, int]:
    stat = path.lstat()
    if not path.is_dir():
        return stat.st_mtime, stat.st_size
    newest, size = stat.st_mtime, 0
    for folder, subfolders, files in os.walk(path):  # links are not followed
        for name in subfolders:
            newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
        for name in files:
            inside = os.lstat(os.path.join(folder, name))
            newest, size = max(newest, inside.st_mtime), size + inside.st_size
    return newest, size


def prune(settings: Settings, protected: set[Path], in_use_since: float, champion_cache: bool = True) -> Pruning:
    """Delete what files_to_prune selects, keeping settings.keep_model_files of each kind; a
    deletion that fails is reported, and the others go on."""
    def absolute(path: Path) -> Path:
        return Path(os.path.abspath(path))  # links not resolved: a link is deleted, never its target

    files = [replace(f, path=absolute(f.path)) for f in model_files(settings, champion_cache)]
    deleted, failed = [], []
    for doomed in files_to_prune(files, {absolute(p) for p in protected}, settings.keep_model_files, in_use_since):
        try:
            _remove(doomed.path)
            deleted.append(doomed)
        except OSError as error:  # permissions, or another run deleted it first
            failed.append((doomed, f"{type(error).__name__}: {error.strerror or error}"))
    return Pruning(deleted, failed)


def _remove(path: Path) -> None:
    """A folder is first renamed out of the way, so a removal that dies half-way never leaves
    what looks like a whole cache entry (load_champion trusts one that exists)."""
    if not path.is_dir():
        path.unlink()
        return
    if not path.name.startswith("."):
        path = path.rename(path.with_name(f".{path.name}{DELETING}{os.getpid()}-{uuid.uuid4().hex[:8]}"))
    shutil.rmtree(path)


@task(name="assemble-training-data", retries=1, cache_policy=NO_CACHE)
def assemble_training_data(
    settings: Settings, champion: ChampionInfo | None, until: pd.Timestamp | None = None, through_batch_id: int | None = None
) -> TrainingData:
    """The rows an update trains on and is judged on: the new batches' rows (minus the newest
    slice, held out), a replay sample of earlier history, and the historical slice."""
    data = _assemble(settings, champion, until, through_batch_id)
    logger = run_logger(__name__)
    logger.info("training data: %d new rows, %d replayed, %d held out for evaluation", len(data.new), len(data.replay), len(data.holdout))
    for note in data.notes:
        logger.warning(note)
    return data


# One retry: training checkpoints every epoch, so a retry resumes where the failed attempt was.
@task(name="train-challenger", retries=1, cache_policy=NO_CACHE)
def train_challenger(data: TrainingData, champion: ChampionInfo | None, settings: Settings, on_epoch_end=None) -> Challenger:
    """Train the challenger on ``data``, from where the settings say (the champion, scratch or a
    checkpoint), renewing the run's claim on its batches after every epoch; ``on_epoch_end``
    gets each epoch's record too."""
    logger = run_logger(__name__)
    engine = ledger.connect(settings.ledger_url)

    def log_epoch(record: dict) -> None:
        logger.info("epoch %d: %s", record["epoch"], ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch"))
        ledger.renew_lease(engine, data.batch_ids, settings.batch_lease_seconds)  # still working on them
        if on_epoch_end is not None:
            on_epoch_end(record)

    challenger = _fit(data, champion, settings, on_epoch_end=log_epoch)
    ledger.renew_lease(engine, data.batch_ids, settings.batch_lease_seconds)
    launch = f" by {settings.train_processes} processes under torchrun" if settings.train_processes > 1 else ""
    logger.info(
        "challenger (%s) trained%s in %.1fs: %d epochs, kept epoch %d",
        challenger.init_from, launch, challenger.train_seconds, challenger.epochs, challenger.best_epoch,
    )
    return challenger


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_models(challenger: Challenger, champion: ChampionInfo | None, data: TrainingData, settings: Settings) -> Evaluation:
    """Score challenger and champion on the same slices (newest, new items, historical)."""
    evaluation = _compare(challenger, champion, data, settings)
    logger = run_logger(__name__)
    for line in describe_evaluation(evaluation):
        logger.info(line)
    return evaluation


def describe_evaluation(evaluation: Evaluation) -> list[str]:
    """One line per slice, then the intervals: what a person reads in the flow's log."""
    metric, k = evaluation.metric, evaluation.challenger.k
    label = f"{metric}@{k} of {evaluation.target_event} events"
    lines = []
    for comparison in evaluation.slices.values():
        if comparison.challenger.users == 0:
            lines.append(f"{comparison.name} slice: no user to score ({comparison.rows:,} rows)")
            continue
        champion = f"{comparison.champion.value(metric):.4f}" if comparison.champion is not None else "none"
        lines.append(
            f"{comparison.name} slice ({comparison.rows:,} rows, {comparison.challenger.users:,} users): "
            f"{label} challenger {comparison.challenger.value(metric):.4f}, champion {champion}"
        )
    low, high = evaluation.challenger_interval
    lines.append(f"challenger {label} on the newest slice, bootstrap interval [{low:.4f}, {high:.4f}]")
    if evaluation.gain_interval is not None:
        low, high = evaluation.gain_interval
        lines.append(f"its gain over the champion (paired bootstrap over users), interval [{low:+.4f}, {high:+.4f}]")
    return lines


@task(name="remember-holdout", cache_policy=NO_CACHE)
def remember_holdout(challenger: Challenger, data: TrainingData) -> Challenger:
    """The challenger with the held-out rows, once it has been judged on them, added to its user
    histories and memory (not its weights): the model that is served."""
    served = _remember_holdout(challenger, data)
    run_logger(__name__).info("the %d held-out rows join the challenger's user histories", len(data.holdout))
    return served


@task(name="prune-model-files", cache_policy=NO_CACHE)
def prune_model_files(settings: Settings) -> Pruning | None:
    """Delete model files beyond the newest settings.keep_model_files of each kind. Kept: the
    files of versions with an alias (champion, previous-champion), init_checkpoint_path, and all
    changed since this run began or within the batch lease (another run may be training)."""
    logger = get_run_logger()
    # Pruning only frees disk: whatever goes wrong is logged, and the run's outcome stands.
    try:
        context, now = FlowRunContext.get(), time.time()
        began = context.flow_run.start_time.timestamp() if context and context.flow_run.start_time else now
        protected = {settings.init_checkpoint_path} if settings.init_checkpoint_path else set()
        try:
            protected |= {cached_checkpoint_path(settings, version) for version in aliased_versions(settings).values()}
            champion_cache = True
        except Exception as error:  # which versions carry an alias is unknown: their cache stays
            logger.warning("the champion cache is not pruned: the registry did not answer (%s: %s)", type(error).__name__, error)
            champion_cache = False
        pruning = prune(settings, protected, min(began, now - settings.batch_lease_seconds), champion_cache)
    except Exception as error:
        logger.warning("model files not pruned: %s: %s", type(error).__name__, error)
        return None
    for failed, why in pruning.failed:
        logger.warning("could not delete %s (%s): %s", failed.path, failed.kind, why)
    if pruning.deleted:
        logger.info(
            "deleted %d model file(s), %s bytes, keeping the newest %d of each kind: %s", len(pruning.deleted),
            f"{sum(f.size for f in pruning.deleted):,}", settings.keep_model_files, ", ".join(f.path.name for f in pruning.deleted),
        )
    return pruning
