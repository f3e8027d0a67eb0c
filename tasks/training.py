"""Assembling training data from the accepted area, training, and evaluating on the same slice."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from data_checks.contract import empty_interactions
from flows.settings import Settings
from models.evaluate import SliceMetrics, evaluate
from models.train import Recommender, TrainConfig, prepare, train
from tasks import ledger
from tasks.ingest import load_catalog
from tasks.tracking import ChampionInfo


@dataclass
class TrainingData:
    new: pd.DataFrame  # rows the champion has not been trained on, minus the holdout
    replay: pd.DataFrame  # earlier rows sampled again so the update does not forget
    holdout: pd.DataFrame  # the newest slice of the new rows, for challenger and champion alike
    eval_users: pd.Index  # users known before the holdout: the ones both models are scored on
    catalog: pd.DataFrame
    batch_ids: list[int]  # ledger batches this training consumes

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
    epochs: int
    final_loss: float


@dataclass(frozen=True)
class Evaluation:
    challenger: SliceMetrics
    champion: SliceMetrics | None
    holdout_rows: int


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


def assemble(
    settings: Settings, champion: ChampionInfo | None, until: pd.Timestamp | None = None, through_batch_id: int | None = None
) -> TrainingData:
    """New rows (pending batches plus the champion's own holdout), a replay sample of history,
    and the newest slice held out. With ``until``, only batches whose events all precede it;
    with ``through_batch_id``, only batches up to that one."""
    engine = ledger.connect(settings.ledger_url)
    pending = [
        b for b in ledger.unconsumed_batches(engine, through_batch_id)
        if until is None or (b.max_event_time is not None and pd.Timestamp(b.max_event_time) < until)
    ]
    history = _concat([pd.read_parquet(b.accepted_path) for b in ledger.consumed_batches(engine) if b.accepted_path])
    carried_over = history.iloc[0:0]
    if champion is not None:
        history, carried_over = split_at_watermark(history, champion.trained_until)
    new = _concat([carried_over, *(pd.read_parquet(b.accepted_path) for b in pending if b.accepted_path)])
    train_part, holdout = holdout_split(new, settings.holdout_fraction)
    n_replay = min(len(history), int(len(train_part) * settings.replay_ratio))
    replay = history.sample(n=n_replay, random_state=settings.seed)
    return TrainingData(
        new=train_part.reset_index(drop=True),
        replay=replay.reset_index(drop=True),
        holdout=holdout.reset_index(drop=True),
        eval_users=pd.Index(pd.concat([history["user_id"], train_part["user_id"]]).unique()),
        catalog=load_catalog(settings),
        batch_ids=[b.id for b in pending],
    )


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
        learning_rate=settings.scratch_learning_rate if scratch else settings.finetune_learning_rate,
        batch_size=settings.batch_size,
        temperature=settings.temperature,
        dim=settings.embedding_dim,
        history_length=settings.history_length,
        device=settings.device,
        seed=settings.seed,
    )


def fit(data: TrainingData, champion: ChampionInfo | None, settings: Settings) -> Challenger:
    """Warm start from the champion when there is one, else train from scratch."""
    init_from = "champion" if champion else "scratch"
    config = train_config(settings, init_from)
    start = Recommender.load(champion.checkpoint_path) if champion else None
    started = time.perf_counter()
    recommender = prepare(data.new, data.catalog, config, start, replay=data.replay if start else None)
    logger = get_run_logger()
    recommender = train(
        recommender,
        pd.concat([data.new, data.replay]) if start else data.new,
        on_epoch_end=lambda epoch, loss: logger.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, loss),
    )
    seconds = time.perf_counter() - started
    path = recommender.save(settings.checkpoints_dir / f"challenger-{uuid.uuid4().hex[:12]}.pt")
    return Challenger(str(path), init_from, seconds, config.epochs, recommender.history[-1]["loss"] if recommender.history else float("nan"))


def compare(challenger: Challenger, champion: ChampionInfo | None, data: TrainingData, settings: Settings) -> Evaluation:
    k = settings.eval_k
    challenger_metrics = evaluate(Recommender.load(challenger.checkpoint_path), data.holdout, data.eval_users, k)
    champion_metrics = (
        evaluate(Recommender.load(champion.checkpoint_path), data.holdout, data.eval_users, k) if champion else None
    )
    return Evaluation(challenger_metrics, champion_metrics, len(data.holdout))


@task(name="assemble-training-data", retries=1, cache_policy=NO_CACHE)
def assemble_training_data(
    settings: Settings, champion: ChampionInfo | None, until: pd.Timestamp | None = None, through_batch_id: int | None = None
) -> TrainingData:
    data = assemble(settings, champion, until, through_batch_id)
    get_run_logger().info(
        "training data: %d new rows, %d replayed, %d held out for evaluation",
        len(data.new), len(data.replay), len(data.holdout),
    )
    return data


@task(name="train-challenger", cache_policy=NO_CACHE)
def train_challenger(data: TrainingData, champion: ChampionInfo | None, settings: Settings) -> Challenger:
    return fit(data, champion, settings)


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_models(challenger: Challenger, champion: ChampionInfo | None, data: TrainingData, settings: Settings) -> Evaluation:
    evaluation = compare(challenger, champion, data, settings)
    champion_text = f"{evaluation.champion.recall:.4f}" if evaluation.champion else "none"
    get_run_logger().info(
        "Recall@%d on %d holdout users: challenger %.4f, champion %s",
        settings.eval_k, evaluation.challenger.users, evaluation.challenger.recall, champion_text,
    )
    return evaluation
