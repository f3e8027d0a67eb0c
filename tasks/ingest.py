"""Landing -> accepted / quarantine / reports, with every file and row accounted for in the ledger."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from data_checks.catalog import validate_catalog
from data_checks.contract import CATALOG_COLUMNS, CATALOG_PREFIX, INTERACTIONS_PREFIX
from data_checks.interactions import (
    CheckPartitions,
    ContractLimits,
    PartitionChecks,
    check_here,
    check_partition,
    read_landing_file,
    validate_interactions,
)
from data_checks.report import markdown_summary, rule_table
from data_checks.rules import ValidationResult
from flows.settings import Settings
from models.files import temporary_beside
from tasks import ledger
from tasks.tracking import log_validation_run

LANDING_SUFFIXES = (".csv", ".parquet")
CATALOG_FILE = "catalog.parquet"


@dataclass(frozen=True)
class LandedFile:
    batch_id: int
    file_name: str
    path: str
    kind: str  # interactions | catalog


@dataclass(frozen=True)
class BatchValidation:
    """A validated batch as the rest of the workflow sees it (no data frames inside)."""

    batch_id: int
    file_name: str
    status: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    reasons: list[str]
    accepted_path: str | None
    quarantine_path: str | None
    report_path: str | None = None
    rule_table: list[dict] = field(default_factory=list)
    kind: str = "interactions"
    max_event_time: datetime | None = None  # the newest accepted event


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kind_of(name: str) -> str | None:
    if not name.endswith(LANDING_SUFFIXES):
        return None
    if name.startswith(INTERACTIONS_PREFIX):
        return "interactions"
    if name.startswith(CATALOG_PREFIX):
        return "catalog"
    return None


def find_new_files(settings: Settings) -> list[LandedFile]:
    """Register landing files not seen before, in name order; content seen under another name is
    recorded as a duplicate and never processed again."""
    engine = ledger.connect(settings.ledger_url)
    known = {(b.file_name, b.sha256): b for b in ledger.all_batches(engine)}
    new = []
    for path in sorted(settings.landing_dir.glob("*")):
        kind = kind_of(path.name)
        if kind is None or not path.is_file():
            continue
        digest = sha256_of(path)
        seen = known.get((path.name, digest))
        if seen is not None:
            if seen.status == "received":  # a run died before recording its outcome: redo it
                new.append(LandedFile(seen.id, path.name, str(path), kind))
            continue
        original = ledger.find_by_hash(engine, digest)
        if original is not None:
            ledger.record_received(
                engine, path.name, digest, path.stat().st_size, kind, "duplicate",
                f"same content as {original.file_name} (batch {original.id})",
            )
            continue
        batch_id = ledger.record_received(engine, path.name, digest, path.stat().st_size, kind)
        if batch_id is not None:  # None: a run working at the same time registered it first and validates it
            new.append(LandedFile(batch_id, path.name, str(path), kind))
    return new


def undecided(settings: Settings) -> list[BatchValidation]:
    """Validated batches still waiting for an update decision, oldest first."""
    return [
        BatchValidation(
            b.id, b.file_name, b.status, b.rows_in, b.rows_accepted, b.rows_quarantined,
            [r for r in b.reasons.split("; ") if r], b.accepted_path, b.quarantine_path, b.report_path,
            max_event_time=b.max_event_time,
        )
        for b in ledger.undecided_batches(ledger.connect(settings.ledger_url))
    ]


def contract_limits(settings: Settings) -> ContractLimits:
    return ContractLimits(
        earliest=pd.Timestamp(settings.earliest_event_time, tz="UTC"),
        now=pd.Timestamp.now(tz="UTC"),
        max_quantity=settings.max_quantity,
        max_unit_price=settings.max_unit_price,
        non_product_item_pattern=settings.non_product_item_pattern,
    )


def validate_file(landed: LandedFile, settings: Settings, check: CheckPartitions = check_here) -> BatchValidation:
    """Validate one landed file, write its accepted rows, quarantine and reports, record the outcome.
    An interactions file is checked in ``settings.validation_partitions`` partitions by ``check``."""
    try:
        raw, notes = read_landing_file(landed.path)
    except Exception as error:  # unreadable: keep the file as it came, say why
        return _quarantine_unreadable(landed, settings, f"unreadable file: {type(error).__name__}: {error}")
    if landed.kind == "catalog":
        result = validate_catalog(raw, settings.max_bad_row_share)
    else:
        result = validate_interactions(raw, settings.max_bad_row_share, contract_limits(settings), settings.validation_partitions, check)
    return _write_outcome(landed, result, notes, settings)


def load_catalog(settings: Settings) -> pd.DataFrame:
    path = settings.accepted_dir / CATALOG_FILE
    if not path.exists():
        return pd.DataFrame({column: pd.Series(dtype="string") for column in CATALOG_COLUMNS})
    return pd.read_parquet(path)


def _write_outcome(landed: LandedFile, result: ValidationResult, notes: list[str], settings: Settings) -> BatchValidation:
    stem = Path(landed.file_name).stem  # a batch's output files share the landing file's stem
    accepted_path = quarantine_path = None
    if result.rows_quarantined:
        quarantine_path = str(_write_parquet(result.quarantined, settings.quarantine_dir / f"{stem}.parquet"))
    if result.rows_accepted and landed.kind == "catalog":
        accepted_path = str(_merge_catalog(result.accepted, settings))
    elif result.rows_accepted:
        accepted_path = str(_write_parquet(result.accepted, settings.accepted_dir / f"{stem}.parquet"))
    report_path = _write_reports(stem, landed.file_name, result, notes, settings)
    times = result.accepted["event_time"] if result.rows_accepted and "event_time" in result.accepted else pd.Series(dtype="datetime64[ns, UTC]")
    reasons = notes + result.reasons
    ledger.record_outcome(
        ledger.connect(settings.ledger_url),
        landed.batch_id,
        result.status,
        result.rows_in,
        result.rows_accepted,
        result.rows_quarantined,
        "; ".join(reasons),
        accepted_path,
        quarantine_path,
        times.min().to_pydatetime() if len(times) else None,
        times.max().to_pydatetime() if len(times) else None,
        str(report_path),
    )
    return BatchValidation(
        landed.batch_id, landed.file_name, result.status, result.rows_in, result.rows_accepted,
        result.rows_quarantined, reasons, accepted_path, quarantine_path, str(report_path), rule_table(result), landed.kind,
        times.max().to_pydatetime() if len(times) else None,
    )


def _merge_catalog(catalog: pd.DataFrame, settings: Settings) -> Path:
    """Upsert into accepted/catalog.parquet: the newest row of an item wins."""
    target = settings.accepted_dir / CATALOG_FILE
    if target.exists():
        catalog = pd.concat([pd.read_parquet(target), catalog]).drop_duplicates("item_id", keep="last")
    return _write_parquet(catalog.reset_index(drop=True), target)


def _write_reports(stem: str, file_name: str, result: ValidationResult, notes: list[str], settings: Settings) -> Path:
    """GE's result as JSON and a Markdown summary beside it; returns the summary's path."""
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    if result.ge_result is not None:
        _write_text(settings.reports_dir / f"{stem}.validation.json", json.dumps(result.ge_result, indent=1, default=str))
    return _write_text(settings.reports_dir / f"{stem}.validation.md", markdown_summary(file_name, result, notes))


def _quarantine_unreadable(landed: LandedFile, settings: Settings, reason: str) -> BatchValidation:
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = settings.quarantine_dir / landed.file_name
    shutil.copyfile(landed.path, target)
    _write_text(target.with_name(target.name + ".reason.txt"), reason + "\n")
    ledger.record_outcome(ledger.connect(settings.ledger_url), landed.batch_id, "rejected", 0, 0, 0, reason, None, str(target), None, None, None)
    return BatchValidation(landed.batch_id, landed.file_name, "rejected", 0, 0, 0, [reason], None, str(target), kind=landed.kind)


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write beside the target and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def _write_text(path: Path, text: str) -> Path:
    tmp = temporary_beside(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def artifact_key(file_name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "validation-" + (re.sub(r"[^a-z0-9]+", "-", file_name.lower()).strip("-") or "batch")


@task(name="ingest-landing", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_landing(settings: Settings) -> list[LandedFile]:
    files = find_new_files(settings)
    get_run_logger().info("%d new landing file(s) in %s", len(files), settings.landing_dir)
    return files


@task(name="check-partition", cache_policy=NO_CACHE)
def check_partition_task(raw: pd.DataFrame, limits: ContractLimits) -> PartitionChecks:
    return check_partition(raw, limits)


def check_on_task_runner(parts: list[pd.DataFrame], limits: ContractLimits) -> list[PartitionChecks]:
    """Each partition a `check-partition` task on the flow's task runner (a Dask cluster)."""
    futures = check_partition_task.map(parts, unmapped(limits))
    return [future.result() for future in futures]


@task(name="validate-batch", cache_policy=NO_CACHE)
def validate_batch(landed: LandedFile, settings: Settings) -> BatchValidation:
    partitioned = settings.validation_partitions > 1 and landed.kind == "interactions"
    result = validate_file(landed, settings, check_on_task_runner if partitioned else check_here)
    get_run_logger().info(
        "%s: %s, %d in, %d accepted, %d quarantined%s", result.file_name, result.status, result.rows_in,
        result.rows_accepted, result.rows_quarantined, f" ({'; '.join(result.reasons)})" if result.reasons else "",
    )
    return result


@task(name="find-undecided-batches", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_undecided_batches(settings: Settings) -> list[BatchValidation]:
    return undecided(settings)


# No retries: the claim is not idempotent; a retry after a commit whose answer was lost would
# read its own claim as another run's. A failed claim fails the batch's subflow; the next run
# decides the batch again, or, if the claim had committed, its rows join the next update.
@task(name="record-decision", cache_policy=NO_CACHE)
def record_decision(settings: Settings, batch_id: int, update: bool) -> bool:
    """Claim the batch's decision; False when a run working at the same time decided it first."""
    return ledger.record_decision(ledger.connect(settings.ledger_url), batch_id, "update" if update else "skip")


@task(name="publish-validation", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_validation(validation: BatchValidation, settings: Settings) -> None:
    """The batch's reports to MLflow, and a Prefect table: expectation, level, rows failed, share."""
    log_validation_run(
        settings, validation.file_name, validation.status,
        {"rows_in": validation.rows_in, "rows_accepted": validation.rows_accepted, "rows_quarantined": validation.rows_quarantined},
        {row["expectation"]: row["rows_failed"] for row in validation.rule_table},
        settings.reports_dir,
    )
    if validation.rule_table:
        create_table_artifact(
            key=artifact_key(validation.file_name),
            table=validation.rule_table,
            description=f"{validation.file_name}: {validation.status}; " + "; ".join(validation.reasons[:3]),
        )
