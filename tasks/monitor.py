"""Signals for the update decision: drift of the new batch, and new data accumulated."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from data_checks.drift import DriftResult, detect_drift
from flows.settings import Settings
from models.train import Recommender
from tasks import ledger
from tasks.ingest import BatchValidation
from tasks.tracking import ChampionInfo


def batch_drift(validation: BatchValidation, champion: ChampionInfo, settings: Settings) -> DriftResult:
    current = pd.read_parquet(validation.accepted_path)
    reference = pd.read_parquet(champion.reference_path)
    item_counts = Recommender.load(champion.checkpoint_path).item_counts
    report_path = settings.reports_dir / f"drift-{Path(validation.file_name).stem}.html"
    return detect_drift(current, reference, item_counts, report_path)


def rows_since_champion(settings: Settings, through_batch_id: int) -> int:
    """Accepted rows no model version has consumed, up to this batch: grows across skipped runs."""
    return sum(b.rows_accepted for b in ledger.unconsumed_batches(ledger.connect(settings.ledger_url), through_batch_id))


@task(name="detect-drift", cache_policy=NO_CACHE)
def detect_batch_drift(validation: BatchValidation, champion: ChampionInfo, settings: Settings) -> DriftResult:
    result = batch_drift(validation, champion, settings)
    get_run_logger().info(
        "drift share %.2f (%s); %.1f%% of interactions on items the champion never saw; report %s",
        result.drift_share, ", ".join(result.drifted_columns) or "no column drifted",
        100 * result.unseen_item_share, result.report_path,
    )
    return result


@task(name="measure-new-volume", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def measure_new_volume(settings: Settings, through_batch_id: int) -> int:
    return rows_since_champion(settings, through_batch_id)
