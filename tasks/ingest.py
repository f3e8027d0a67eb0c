"""Landing -> accepted / quarantine, with every file and row accounted for in the ledger."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from data_checks.contract import CATALOG_COLUMNS, CATALOG_PREFIX, INTERACTIONS_PREFIX, REASON_COLUMN
from data_checks.interactions import ValidationResult, read_landing_file, validate_interactions
from flows.settings import Settings
from tasks import ledger

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
        new.append(LandedFile(batch_id, path.name, str(path), kind))
    return new


def validate_file(landed: LandedFile, settings: Settings) -> BatchValidation:
    """Validate one interactions file, write its accepted and quarantined rows, record the outcome."""
    now = pd.Timestamp.now(tz="UTC")
    try:
        raw = read_landing_file(landed.path)
    except Exception as error:  # unreadable: keep the file as it came, say why
        return _quarantine_unreadable(landed, settings, f"unreadable file: {type(error).__name__}: {error}")
    result = validate_interactions(
        raw, settings.max_bad_row_share, pd.Timestamp(settings.earliest_event_time, tz="UTC"), now
    )
    return _write_outcome(landed, result, settings)


def merge_catalog(landed: LandedFile, settings: Settings) -> BatchValidation:
    """Upsert a catalog file into accepted/catalog.parquet; rows without an item id are quarantined."""
    try:
        raw = read_landing_file(landed.path)
    except Exception as error:
        return _quarantine_unreadable(landed, settings, f"unreadable file: {type(error).__name__}: {error}")
    missing = sorted({"item_id", "title"} - set(raw.columns))
    engine = ledger.connect(settings.ledger_url)
    if missing:
        reason = f"missing required columns: {', '.join(missing)}"
        quarantined = raw.assign(**{REASON_COLUMN: "batch rejected: " + reason})
        path = _write_parquet(quarantined, settings.quarantine_dir / f"{Path(landed.file_name).stem}.parquet")
        ledger.record_outcome(engine, landed.batch_id, "rejected", len(raw), 0, len(raw), reason, None, str(path), None, None)
        return BatchValidation(landed.batch_id, landed.file_name, "rejected", len(raw), 0, len(raw), [reason], None, str(path))
    bad = raw["item_id"].isna()
    catalog = raw[~bad].reindex(columns=list(CATALOG_COLUMNS)).astype("string")
    catalog["price"] = pd.to_numeric(catalog["price"], errors="coerce")
    target = settings.accepted_dir / CATALOG_FILE
    if target.exists():
        catalog = pd.concat([pd.read_parquet(target), catalog]).drop_duplicates("item_id", keep="last")
    accepted_path = _write_parquet(catalog.reset_index(drop=True), target)
    quarantine_path = None
    reasons = []
    if bad.any():
        reasons = [f"{int(bad.sum())} rows: item_id_present"]
        quarantine_path = str(_write_parquet(raw[bad].assign(**{REASON_COLUMN: "item_id_present"}), settings.quarantine_dir / f"{Path(landed.file_name).stem}.parquet"))
    status = "partially_accepted" if bad.any() else "accepted"
    ledger.record_outcome(
        engine, landed.batch_id, status, len(raw), int((~bad).sum()), int(bad.sum()), "; ".join(reasons),
        str(accepted_path), quarantine_path, None, None,
    )
    return BatchValidation(landed.batch_id, landed.file_name, status, len(raw), int((~bad).sum()), int(bad.sum()), reasons, str(accepted_path), quarantine_path)


def load_catalog(settings: Settings) -> pd.DataFrame:
    path = settings.accepted_dir / CATALOG_FILE
    if not path.exists():
        return pd.DataFrame({column: pd.Series(dtype="string") for column in CATALOG_COLUMNS})
    return pd.read_parquet(path)


def _write_outcome(landed: LandedFile, result: ValidationResult, settings: Settings) -> BatchValidation:
    stem = Path(landed.file_name).stem
    accepted_path = quarantine_path = None
    if result.rows_accepted:
        accepted_path = str(_write_parquet(result.accepted, settings.accepted_dir / f"{stem}.parquet"))
    if result.rows_quarantined:
        quarantine_path = str(_write_parquet(result.quarantined, settings.quarantine_dir / f"{stem}.parquet"))
    times = result.accepted["event_time"] if result.rows_accepted else pd.Series(dtype="datetime64[ns, UTC]")
    ledger.record_outcome(
        ledger.connect(settings.ledger_url),
        landed.batch_id,
        result.status,
        result.rows_in,
        result.rows_accepted,
        result.rows_quarantined,
        "; ".join(result.reasons),
        accepted_path,
        quarantine_path,
        times.min().to_pydatetime() if len(times) else None,
        times.max().to_pydatetime() if len(times) else None,
    )
    return BatchValidation(
        landed.batch_id, landed.file_name, result.status, result.rows_in, result.rows_accepted,
        result.rows_quarantined, result.reasons, accepted_path, quarantine_path,
    )


def _quarantine_unreadable(landed: LandedFile, settings: Settings, reason: str) -> BatchValidation:
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = settings.quarantine_dir / landed.file_name
    shutil.copyfile(landed.path, target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    ledger.record_outcome(ledger.connect(settings.ledger_url), landed.batch_id, "rejected", 0, 0, 0, reason, None, str(target), None, None)
    return BatchValidation(landed.batch_id, landed.file_name, "rejected", 0, 0, 0, [reason], None, str(target))


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write beside the target and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


@task(name="ingest-landing", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_landing(settings: Settings) -> list[LandedFile]:
    files = find_new_files(settings)
    get_run_logger().info("%d new landing file(s) in %s", len(files), settings.landing_dir)
    return files


@task(name="validate-batch", cache_policy=NO_CACHE)
def validate_batch(landed: LandedFile, settings: Settings) -> BatchValidation:
    result = merge_catalog(landed, settings) if landed.kind == "catalog" else validate_file(landed, settings)
    get_run_logger().info(
        "%s: %s, %d in, %d accepted, %d quarantined%s", result.file_name, result.status, result.rows_in,
        result.rows_accepted, result.rows_quarantined, f" ({'; '.join(result.reasons)})" if result.reasons else "",
    )
    return result
