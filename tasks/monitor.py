"""Signals for the update decision: drift, performance decay, new data, and the champion's age."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from data_checks.drift import ChampionCounts, DriftResult, detect_file_drift, is_in
from data_checks.landing import output_stem
from data_checks.markup import md_text, url_segment
from models.settings import Settings
from models.evaluate import evaluate, user_sample
from models.files import read_parquet
from models.recommender import Recommender
from tasks import ledger
from tasks.gates import METRIC_LABELS, UpdateDecision, UpdateSignals, champion_age_days
from tasks.ingest import BatchValidation, artifact_key, load_catalog
from tasks.tracking import ChampionInfo, mlflow_client, nested_run_tags, registry_client, tracking_store


@dataclass(frozen=True)
class Decay:
    """The champion's ranking quality on a new batch (its purchases are the labels) against the
    quality it had on its own holdout when it was trained."""

    batch_score: float  # the primary metric at K on the batch
    holdout_score: float  # ... on the champion's own holdout
    users: int  # batch users the champion knows, the ones scored
    metric: str = "recall"  # settings.primary_metric

    @property
    def relative(self) -> float:
        if self.holdout_score <= 0 or self.users == 0:
            return 0.0
        return max(0.0, (self.holdout_score - self.batch_score) / self.holdout_score)


def batch_drift(validation: BatchValidation, champion: ChampionInfo, settings: Settings) -> DriftResult:
    """The batch against the champion's reference, on at most settings.drift_sample_rows rows."""
    reference = read_parquet(champion.reference_path)
    recommender = Recommender.load(champion.checkpoint_path)
    catalog = load_catalog(settings)
    counts = ChampionCounts(recommender.item_counts, recommender.user_counts, catalog.set_index("item_id")["category"])
    report_path = settings.reports_dir / f"{output_stem(validation.batch_id, validation.file_name)}.drift.html"
    return detect_file_drift(validation.accepted_path, reference, counts, report_path, settings.drift_sample_rows, settings.seed)


def batch_decay(validation: BatchValidation, champion: ChampionInfo, settings: Settings) -> Decay:
    """Recall@K of the champion on the batch's target events, over the batch's users it knows
    (at most settings.decay_sample_users of them, the same ones for the same batch)."""
    recommender = Recommender.load(champion.checkpoint_path)
    known = pd.Index(recommender.users.ids)
    batch_users = pd.Index(pq.read_table(validation.accepted_path, columns=["user_id"])["user_id"].unique().to_pandas())
    if len(batch_users) > settings.decay_sample_users:
        known = user_sample(batch_users.intersection(known), settings.decay_sample_users)
        table = pq.read_table(validation.accepted_path)
        batch = table.filter(is_in(table["user_id"], known)).to_pandas()
    else:
        batch = read_parquet(validation.accepted_path)
    metrics = evaluate(recommender, batch, known, settings.eval_k, target_event=settings.target_event)
    metric = settings.primary_metric
    return Decay(metrics.value(metric), champion.holdout_score(metric), metrics.users, metric)


def rows_since_champion(settings: Settings, through_batch_id: int) -> int:
    """Accepted rows no model version has consumed, up to this batch: grows across skipped runs."""
    return sum(b.rows_accepted for b in ledger.unconsumed_batches(ledger.connect(settings.ledger_url), through_batch_id))


def log_decision_run(
    settings: Settings, validation: BatchValidation, drift: DriftResult, decay: Decay, decision: UpdateDecision
) -> str:
    """An MLflow run per decision, update or not: every signal, the thresholds, the drift report."""
    _, experiment_id = mlflow_client(settings)
    tags = nested_run_tags("decision")
    with tracking_store(settings), mlflow.start_run(experiment_id=experiment_id, run_name=f"decide {validation.file_name}", tags=tags) as run:
        mlflow.set_tags(
            {
                "freshrec.batch": validation.file_name,
                "freshrec.update": str(decision.update).lower(),
                "freshrec.reasons": "; ".join(decision.reasons),
            }
        )
        mlflow.log_params({f"threshold.{s.name}": s.threshold for s in decision.signals})
        mlflow.log_metrics(
            {
                **{f"signal.{s.name}": s.value for s in decision.signals},
                f"batch_{decay.metric}": decay.batch_score,
                f"holdout_{decay.metric}": decay.holdout_score,
                "unseen_item_share": drift.unseen_item_share,
                "unseen_user_share": drift.unseen_user_share,
                **{f"drift.{c.column}": c.score for c in drift.columns},
            }
        )
        if drift.report_path:
            mlflow.log_artifact(drift.report_path, artifact_path="reports")
        return run.info.run_id


@task(name="detect-batch-drift", cache_policy=NO_CACHE)
def detect_batch_drift(validation: BatchValidation, champion: ChampionInfo, settings: Settings) -> DriftResult:
    result = batch_drift(validation, champion, settings)
    compared = "" if result.rows_compared == result.rows else f" on {result.rows_compared:,} of {result.rows:,} rows (whole orders)"
    get_run_logger().info(
        "drift share %.2f%s (%s); %.1f%% of interactions on items and %.1f%% by users the champion never saw; report %s",
        result.drift_share, compared, ", ".join(result.drifted_columns) or "no column drifted",
        100 * result.unseen_item_share, 100 * result.unseen_user_share, result.report_path,
    )
    return result


@task(name="measure-decay", cache_policy=NO_CACHE)
def measure_decay(validation: BatchValidation, champion: ChampionInfo, settings: Settings) -> Decay:
    decay = batch_decay(validation, champion, settings)
    get_run_logger().info(
        "champion %s@%d on the batch %.4f over %d known users (on its holdout: %.4f): decay %.0f%%",
        METRIC_LABELS[decay.metric], settings.eval_k, decay.batch_score, decay.users, decay.holdout_score, 100 * decay.relative,
    )
    return decay


@task(name="measure-signals", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def measure_signals(validation: BatchValidation, champion: ChampionInfo, drift: DriftResult, decay: Decay, settings: Settings) -> UpdateSignals:
    """Gather the four signals; the new-row count is read from the ledger."""
    return UpdateSignals(
        drift_share=drift.drift_share,
        decay=decay.relative,
        new_rows=rows_since_champion(settings, validation.batch_id),
        champion_age_days=champion_age_days(validation.max_event_time, champion.trained_until),
    )


@task(name="log-decision", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_decision(settings: Settings, validation: BatchValidation, drift: DriftResult, decay: Decay, decision: UpdateDecision) -> str:
    """The decision in MLflow and in Prefect: a table of signals and a link to the drift report."""
    run_id = log_decision_run(settings, validation, drift, decay, decision)
    key = artifact_key(validation.file_name).replace("validation-", "decision-", 1)
    # Table cells are plain text in Prefect's UI; the description and a link's text are Markdown.
    create_table_artifact(
        key=key,
        table=[{**asdict(s), "verdict": "fired" if s.fired else "quiet"} for s in decision.signals],
        description=md_text(f"{validation.file_name}: {'update' if decision.update else 'no update'}: {'; '.join(decision.reasons)}"),
    )
    if drift.report_path:
        report_uri = registry_client(settings).get_run(run_id).info.artifact_uri + "/reports/" + url_segment(Path(drift.report_path).name)
        create_link_artifact(key=key.replace("decision-", "drift-report-", 1), link=report_uri,
                             link_text=md_text(f"Evidently drift report for {validation.file_name}"))
    return run_id
