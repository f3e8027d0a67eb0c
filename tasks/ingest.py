"""Landing -> accepted / quarantine / reports, with every file and row accounted for in the ledger."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from data_checks import chunked
import data_checks.interactions as interaction_checks
from data_checks.catalog import validate_catalog
from data_checks.contract import CATALOG_COLUMNS, UNKNOWN_KIND, in_progress, kind_of
from data_checks.interactions import (
    CheckPartitions,
    ContractLimits,
    EarlierBatches,
    PartitionChecks,
    check_here,
    naive_time_count,
    row_fingerprints,
    validate_interactions,
)
from data_checks.landing import EmptyFileError, count_records, is_parquet, output_stem, read_landing_bytes, record_lines
from data_checks.markup import md_text
from data_checks.report import markdown_summary, rule_table
from data_checks.rules import ValidationResult, rejected
from models.settings import Settings
from models.files import locked, read_parquet, temporary_beside, write_parquet
from tasks import events, ledger
from tasks.report import BatchOutcome
from tasks.tracking import log_validation_run, mlflow_client

FINGERPRINTS_SUFFIX = ".fingerprints.npy"
IGNORED_HASH = ""  # an ignored entry is not hashed: its record is keyed by name alone
CATALOG_FILE = "catalog.parquet"
LANDING_HASHES = Path("state") / "landing-hashes.json"  # under the home: see LandingHashes
# A digest is remembered only for a file last changed at least this long before the run began:
# a write in the same timestamp tick as the hashing would leave the stat as it was (file systems
# stamp times in ticks of up to 2 s), and the cached digest would then hide the change.
HASH_CACHE_MIN_AGE_SECONDS = 2.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LandedFile:
    batch_id: int
    file_name: str
    path: str
    kind: str  # interactions | catalog | ignored (recorded, not processed: see reason)
    sha256: str = ""  # of the content registered: validation reads the file only if it still has it
    reason: str = ""


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
    decision: str | None = None  # the ledger's update decision so far (see tasks/ledger.py)
    update_attempts: int = 0
    update_error: str | None = None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LandingHashes:
    """The digests of landing files, by name, with the stat each was taken at: a file whose size,
    mtime, ctime and inode are all unchanged is not read again (ctime cannot be set back, so a
    rewrite that restores mtime is still seen). Only a cache: a missing or corrupt file means
    hashing again, and whatever it says, validation hashes the bytes it reads and checks them
    against the digest registered. Written whole and renamed, so two runs at once leave one
    run's valid view (the last writer's)."""

    path: Path
    recorded: dict[str, dict] = field(default_factory=dict)  # as read
    seen: dict[str, dict] = field(default_factory=dict)  # the files of this run's landing/: what is written back

    @classmethod
    def load(cls, path: Path) -> "LandingHashes":
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["files"]
            if not all(isinstance(name, str) and _valid_hash_entry(entry) for name, entry in entries.items()):
                raise ValueError("an entry is not a stat and a digest")
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            logger.warning(
                "the landing hash cache %s cannot be used (%s: %s): every landing file is hashed again", path, type(error).__name__, error,
            )
            return cls(path)
        return cls(path, entries)

    def digest(self, name: str, stat: os.stat_result) -> str | None:
        """The recorded digest of ``name`` when its stat is the one it was taken at."""
        entry = self.recorded.get(name)
        if entry is None or entry["stat"] != _stat_key(stat):
            return None
        self.seen[name] = entry
        return entry["sha256"]

    def remember(self, name: str, stat: os.stat_result, digest: str, run_began: float) -> None:
        """Record the digest of ``name`` taken after ``stat``, unless the file changed too close to
        ``run_began`` for its stat to tell a later change (HASH_CACHE_MIN_AGE_SECONDS)."""
        if run_began - max(stat.st_mtime, stat.st_ctime) >= HASH_CACHE_MIN_AGE_SECONDS:
            self.seen[name] = {"stat": _stat_key(stat), "sha256": digest}

    def save(self) -> None:
        """Write the entries of the files seen (those gone from landing/ drop out); a failure is
        logged, never raised: the next run hashes again."""
        if self.seen == self.recorded:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_text(self.path, json.dumps({"files": self.seen}, separators=(",", ":")))
        except OSError as error:
            logger.warning("the landing hash cache %s was not written (%s): the next run hashes again", self.path, error)


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _valid_hash_entry(entry) -> bool:
    return (
        isinstance(entry, dict) and isinstance(entry.get("stat"), list) and len(entry["stat"]) == 4
        and all(type(value) is int for value in entry["stat"])
        and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
    )


def why_ignored(path: Path, landing_dir: Path) -> str | None:
    """Why freshrec does not process this entry of landing/, or None when it does."""
    if path.is_symlink():
        return "a symbolic link: landing/ takes regular files only (a link may point anywhere on the worker's disk)"
    if path.parent != landing_dir:
        return "in a subfolder: only files directly in landing/ are read"
    if not path.is_file():
        return "not a regular file"
    if kind_of(path.name) is None:
        return UNKNOWN_KIND
    return None


def landing_entries(landing_dir: Path) -> list[Path]:
    """Every file, link and other entry under landing/, subfolders included, in name order;
    symbolic links to folders are not followed."""
    entries = []
    for folder, subfolders, files in os.walk(landing_dir, followlinks=False):
        subfolders[:] = [d for d in subfolders if not in_progress(d)]
        entries += [Path(folder) / name for name in files]
        entries += [Path(folder) / name for name in subfolders if (Path(folder) / name).is_symlink()]
    return sorted(entries, key=lambda p: p.relative_to(landing_dir).as_posix())


def settled(path: Path, settle_seconds: float, now: float) -> bool:
    """Unchanged for ``settle_seconds``: neither written (mtime) nor touched (ctime, which a copy
    that preserves times cannot set back) since."""
    stat = path.stat()
    return now - max(stat.st_mtime, stat.st_ctime) >= settle_seconds


def find_new_files(settings: Settings) -> list[LandedFile]:
    """Register landing files not seen before, in name order. Content seen under another name is
    recorded as a duplicate and never processed again; a file still changing is left for a later
    run; every other entry of landing/ is recorded once as ``ignored``, with the reason, and
    returned so the run reports it. A file unchanged since an earlier run hashed it is not read
    again (LandingHashes)."""
    engine = ledger.connect(settings.ledger_url)
    records = ledger.all_batches(engine)
    known = {(b.file_name, b.sha256): b for b in records}
    hashes = LandingHashes.load(settings.home / LANDING_HASHES)
    new, waiting, now = [], [], time.time()
    landing_dir = settings.landing_dir
    for path in landing_entries(landing_dir) if landing_dir.is_dir() else []:
        name = path.relative_to(landing_dir).as_posix()
        if in_progress(path.name):
            continue
        reason = why_ignored(path, landing_dir)
        if reason is not None:
            new += _ignore(engine, known, name, reason)
            continue
        try:
            if not settled(path, settings.landing_settle_seconds, now):
                waiting.append(name)
                continue
            stat = path.stat()  # before reading: a change while it is read shows in the next run's stat
            digest = hashes.digest(name, stat)
            if digest is None:
                digest = sha256_of(path)
                hashes.remember(name, stat, digest, now)
            size = path.stat().st_size
        except OSError as error:  # permissions, or removed meanwhile: recorded, the others go on
            new += _ignore(engine, known, name, f"cannot be read: {type(error).__name__}: {error.strerror or error}")
            continue
        kind = kind_of(name)
        seen = known.get((name, digest))
        if seen is not None:
            if seen.status == "received":  # a run died before recording its outcome: redo it
                new.append(LandedFile(seen.id, name, str(path), kind, digest))
            elif seen.status == "ignored" and ledger.reopen_ignored(engine, seen.id):
                # This content was registered once and changed before it could be read: back, settled, it is read now.
                new.append(LandedFile(seen.id, name, str(path), kind, digest))
            continue
        original = ledger.find_by_hash(engine, digest)
        if original is not None:
            ledger.record_received(
                engine, name, digest, size, kind, "duplicate", f"same content as {original.file_name} (batch {original.id})",
            )
            continue
        batch_id = ledger.record_received(engine, name, digest, size, kind)
        if batch_id is not None:  # None: a run working at the same time registered it first and validates it
            new.append(LandedFile(batch_id, name, str(path), kind, digest))
    if waiting:
        logger.info("%d landing file(s) still changing, left for a later run: %s", len(waiting), ", ".join(waiting))
    hashes.save()
    return new


def _ignore(engine, known: dict, name: str, reason: str) -> list[LandedFile]:
    """Record an entry freshrec does not process, once per name; the new record, to report."""
    key = (name[:512], IGNORED_HASH)
    if key in known:
        return []
    known[key] = None
    batch_id = ledger.record_received(engine, key[0], IGNORED_HASH, 0, "other", "ignored", reason)
    return [] if batch_id is None else [LandedFile(batch_id, key[0], "", "ignored", IGNORED_HASH, reason)]


def validation_of(b: ledger.BatchRecord) -> BatchValidation:
    """A batch as the ledger recorded it."""
    return BatchValidation(
        b.id, b.file_name, b.status, b.rows_in, b.rows_accepted, b.rows_quarantined,
        [r for r in b.reasons.split("; ") if r], b.accepted_path, b.quarantine_path, b.report_path, kind=b.kind,
        max_event_time=b.max_event_time, decision=b.decision, update_attempts=b.update_attempts, update_error=b.update_error,
    )


def undecided(settings: Settings) -> list[BatchValidation]:
    """Validated batches waiting for an update decision, oldest first: new ones, and those an
    earlier run began and did not finish or that failed (a batch out of attempts is parked)."""
    return [validation_of(b) for b in ledger.undecided_batches(ledger.connect(settings.ledger_url), settings.max_batch_attempts)]


def contract_limits(settings: Settings) -> ContractLimits:
    return ContractLimits(
        earliest=pd.Timestamp(settings.earliest_event_time, tz="UTC"),
        now=pd.Timestamp.now(tz="UTC"),
        max_quantity=settings.max_quantity,
        max_unit_price=settings.max_unit_price,
        non_product_item_pattern=settings.non_product_item_pattern,
    )


def fingerprints_path(accepted_path: str | Path) -> Path:
    """Where a batch's accepted rows' fingerprints lie: beside its accepted file."""
    path = Path(accepted_path)
    return path.with_name(path.stem + FINGERPRINTS_SUFFIX)


def earlier_batches(settings: Settings, batch_id: int) -> EarlierBatches | None:
    """The look-up of rows other batches accepted before batch ``batch_id``: the fingerprints of
    the batches whose newest event lies within ``duplicate_window_days`` of the newest event
    recorded (a bounded index, 8 bytes a row, never a re-read of history). None when the check
    is off."""
    if not settings.duplicate_window_days:
        return None

    def lookup(typed: pd.DataFrame) -> pd.Series:
        fingerprints = row_fingerprints(typed).to_numpy()
        held = np.zeros(len(fingerprints), dtype=np.int64)
        batches = [
            b for b in ledger.all_batches(ledger.connect(settings.ledger_url))
            if b.kind == "interactions" and b.rows_accepted and b.accepted_path and b.max_event_time is not None and b.id != batch_id
        ]
        if not batches:
            return pd.Series(held, index=typed.index)
        since = max(b.max_event_time for b in batches) - timedelta(days=settings.duplicate_window_days)
        known, owners = [], []
        for batch in batches:
            path = fingerprints_path(batch.accepted_path)
            if batch.max_event_time >= since and path.exists():  # absent: accepted before the check existed
                known.append(np.load(path))
                owners.append(np.full(len(known[-1]), batch.id, dtype=np.int64))
        if known:
            known_sorted, order = _sorted(np.concatenate(known))
            owners_sorted = np.concatenate(owners)[order]
            at = np.clip(np.searchsorted(known_sorted, fingerprints), 0, len(known_sorted) - 1)
            found = known_sorted[at] == fingerprints
            held[found] = owners_sorted[at[found]]
        return pd.Series(held, index=typed.index)

    return lookup


def _sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values, kind="stable")
    return values[order], order


def validate_file(landed: LandedFile, settings: Settings, check: CheckPartitions = check_here) -> BatchValidation:
    """Validate one landed file, write its accepted rows, quarantine and reports, record the outcome.
    The bytes read are hashed and must be the content registered; those same bytes are parsed.
    An interactions file is checked in ``settings.validation_partitions`` partitions by ``check``;
    one of more than ``settings.validation_chunk_rows`` records in pieces (`_validate_in_pieces`)."""
    if landed.kind == "ignored":
        return BatchValidation(landed.batch_id, landed.file_name, "ignored", 0, 0, 0, [landed.reason], None, None, kind="ignored")
    if landed.kind == "interactions":
        try:
            records = chunked.more_records_than(Path(landed.path), settings.validation_chunk_rows)
        except OSError:
            records = None  # the read below records why it cannot be read
        if records is not None:
            outcome = _validate_in_pieces(landed, settings, check, records)
            if outcome is not None:
                return outcome
    try:
        data = Path(landed.path).read_bytes()
    except OSError as error:  # removed or made unreadable since it was registered
        return _record_ignored(landed, settings, f"cannot be read since it was registered: {type(error).__name__}: {error.strerror or error}")
    if landed.sha256 and hashlib.sha256(data).hexdigest() != landed.sha256:
        return _record_ignored(landed, settings, "changed after it was registered (still being written?): its new content is a new batch")
    parquet = is_parquet(landed.file_name)
    try:
        raw, notes = read_landing_bytes(data, landed.file_name, settings.landing_encoding)
        records = count_records(data, parquet)
    except EmptyFileError as error:
        return _quarantine_unreadable(landed, data, settings, str(error))
    except Exception as error:  # a CSV the parser gives up on still has lines: each one is counted and kept
        reason = f"unreadable file: {type(error).__name__}: {_one_line(error)}"
        if parquet:
            return _quarantine_unreadable(landed, data, settings, reason)
        return _write_outcome(landed, rejected(record_lines(data, settings.landing_encoding), [reason], pd.DataFrame()), [], settings)
    if records != len(raw):
        reason = (f"the file holds {records:,} records but parses as {len(raw):,} rows (an unclosed quote, or a line break "
                  "inside a value: one record per line is the rule): rejected whole, each record kept")
        lines = record_lines(data, settings.landing_encoding) if not parquet else raw
        return _write_outcome(landed, rejected(lines, [reason], pd.DataFrame()), notes, settings)
    if landed.kind == "catalog":
        return _write_outcome(landed, validate_catalog(raw, settings.max_bad_row_share), notes, settings)
    naive = naive_time_count(raw) if "event_time" in raw.columns else 0
    if naive:
        notes.append(f"{naive:,} event_time value(s) carry no UTC offset: read as UTC")
    # From the look-up of earlier batches' rows to the record of this one's, one batch at a time:
    # two overlapping files validated at once must not both accept the rows they share.
    with locked(settings.accepted_dir / "row-fingerprints"):
        recorded = ledger.batch(ledger.connect(settings.ledger_url), landed.batch_id)
        if recorded is not None and recorded.status != "received":
            return validation_of(recorded)  # a run working at the same time validated it while this one waited
        result = validate_interactions(
            raw, settings.max_bad_row_share, contract_limits(settings), settings.validation_partitions, check,
            earlier_batches(settings, landed.batch_id),
        )
        return _write_outcome(landed, result, notes, settings)


def _validate_in_pieces(landed: LandedFile, settings: Settings, check: CheckPartitions, records: int) -> BatchValidation | None:
    """An interactions file of ``records`` records (more than ``settings.validation_chunk_rows``)
    validated in pieces in bounded memory (data_checks/chunked.py), with the outcome of one piece,
    through spill files in the home removed after. None when its records or columns cannot be
    trusted (the parser fails, the counts disagree, the columns are not the contract's): the
    one-piece path below reads it again and rejects it whole, as it always has."""
    spill_root = settings.home / "tmp"
    spill_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"validation-{landed.batch_id:06d}-", dir=spill_root) as folder:
        pieces = chunked.pieces_for(records, settings.validation_chunk_rows)
        try:
            spilled = chunked.spill_landing(Path(landed.path), settings.landing_encoding, pieces, Path(folder))
        except Exception as error:  # unreadable or unparsable: what the one-piece path reports
            logger.info("%s is read whole: it does not stream (%s: %s)", landed.file_name, type(error).__name__, _one_line(error))
            return None
        if landed.sha256 and spilled.sha256 != landed.sha256:
            return _record_ignored(landed, settings, "changed after it was registered (still being written?): its new content is a new batch")
        if spilled.records != spilled.rows or not chunked.schema_fits(spilled):
            return None
        with locked(settings.accepted_dir / "row-fingerprints"):  # as in validate_file
            recorded = ledger.batch(ledger.connect(settings.ledger_url), landed.batch_id)
            if recorded is not None and recorded.status != "received":
                return validation_of(recorded)
            result = chunked.validate_pieces(
                spilled, Path(folder), settings.max_bad_row_share, contract_limits(settings), check, settings.validation_partitions,
                earlier_batches(settings, landed.batch_id), fingerprints=bool(settings.duplicate_window_days),
            )
            notes = spilled.notes
            if result.naive_times:
                notes = [*notes, f"{result.naive_times:,} event_time value(s) carry no UTC offset: read as UTC"]
            return _write_piece_outcome(landed, result, notes, settings)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())[:300]


def load_catalog(settings: Settings) -> pd.DataFrame:
    path = settings.accepted_dir / CATALOG_FILE
    if not path.exists():
        return pd.DataFrame({column: pd.Series(dtype="string") for column in CATALOG_COLUMNS})
    return read_parquet(path)


def status_of(result: ValidationResult) -> str:
    """A batch with rows but none accepted says so: ``quarantined``, never partially accepted."""
    if result.status == "partially_accepted" and result.rows_accepted == 0:
        return "quarantined"
    return result.status


def _write_outcome(landed: LandedFile, result: ValidationResult, notes: list[str], settings: Settings) -> BatchValidation:
    stem = output_stem(landed.batch_id, landed.file_name)
    accepted_path = quarantine_path = None
    if result.rows_quarantined:
        quarantine_path = str(_write_parquet(result.quarantined, settings.quarantine_dir / f"{stem}.parquet"))
    if result.rows_accepted and landed.kind == "catalog":
        accepted_path = str(_merge_catalog(result.accepted, settings))
    elif result.rows_accepted:
        accepted_path = str(_write_parquet(result.accepted, settings.accepted_dir / f"{stem}.parquet"))
        if settings.duplicate_window_days:
            _write_array(np.unique(row_fingerprints(result.accepted).to_numpy()), fingerprints_path(accepted_path))
    report_path = _write_reports(stem, landed.file_name, result, notes, settings)
    times = result.accepted["event_time"] if result.rows_accepted and "event_time" in result.accepted else pd.Series(dtype="datetime64[ns, UTC]")
    first, last = (times.min(), times.max()) if len(times) else (None, None)
    return _record_result(landed, result, notes, settings, accepted_path, quarantine_path, report_path, first, last)


def _write_piece_outcome(landed: LandedFile, result: chunked.PieceResult, notes: list[str], settings: Settings) -> BatchValidation:
    """As `_write_outcome`, the rows streamed from the pieces' spill files in the file's row order."""
    stem = output_stem(landed.batch_id, landed.file_name)
    accepted_path = quarantine_path = None
    if result.rows_quarantined:
        quarantine_path = str(_write_merged(result.quarantined, settings.quarantine_dir / f"{stem}.parquet", result.quarantine_reason))
    if result.rows_accepted:
        accepted_path = str(_write_merged(result.accepted, settings.accepted_dir / f"{stem}.parquet"))
        if settings.duplicate_window_days:
            _write_array(np.unique(result.fingerprints), fingerprints_path(accepted_path))
    report_path = _write_reports(stem, landed.file_name, result, notes, settings)
    return _record_result(landed, result, notes, settings, accepted_path, quarantine_path, report_path, result.min_event_time, result.max_event_time)


def _record_result(
    landed: LandedFile, result: ValidationResult | chunked.PieceResult, notes: list[str], settings: Settings,
    accepted_path: str | None, quarantine_path: str | None, report_path: Path, first: pd.Timestamp | None, last: pd.Timestamp | None,
) -> BatchValidation:
    """The outcome in the ledger, and as the rest of the workflow sees it."""
    reasons = notes + result.reasons
    status = status_of(result)
    ledger.record_outcome(
        ledger.connect(settings.ledger_url),
        landed.batch_id,
        status,
        result.rows_in,
        result.rows_accepted,
        result.rows_quarantined,
        "; ".join(reasons),
        accepted_path,
        quarantine_path,
        first.to_pydatetime() if first is not None else None,
        last.to_pydatetime() if last is not None else None,
        str(report_path),
    )
    return BatchValidation(
        landed.batch_id, landed.file_name, status, result.rows_in, result.rows_accepted,
        result.rows_quarantined, reasons, accepted_path, quarantine_path, str(report_path), rule_table(result), landed.kind,
        last.to_pydatetime() if last is not None else None,
    )


def _merge_catalog(catalog: pd.DataFrame, settings: Settings) -> Path:
    """Upsert into accepted/catalog.parquet: the newest row of an item wins. Under a lock, so two
    runs merging at once both keep their items (the read, merge and write are one step)."""
    target = settings.accepted_dir / CATALOG_FILE
    with locked(target):
        if target.exists():
            catalog = pd.concat([read_parquet(target), catalog]).drop_duplicates("item_id", keep="last")
        return _write_parquet(catalog.reset_index(drop=True), target)


def _write_reports(stem: str, file_name: str, result: ValidationResult, notes: list[str], settings: Settings) -> Path:
    """GE's result as JSON and a Markdown summary beside it; returns the summary's path."""
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    if result.ge_result is not None:
        _write_text(settings.reports_dir / f"{stem}.validation.json", json.dumps(result.ge_result, indent=1, default=str))
    return _write_text(settings.reports_dir / f"{stem}.validation.md", markdown_summary(file_name, result, notes))


def _record_ignored(landed: LandedFile, settings: Settings, reason: str) -> BatchValidation:
    """A registered file that cannot be validated as registered: recorded as ignored, with why."""
    ledger.record_outcome(ledger.connect(settings.ledger_url), landed.batch_id, "ignored", 0, 0, 0, reason, None, None, None, None, None)
    return BatchValidation(landed.batch_id, landed.file_name, "ignored", 0, 0, 0, [reason], None, None, kind=landed.kind)


def _quarantine_unreadable(landed: LandedFile, data: bytes, settings: Settings, reason: str) -> BatchValidation:
    """A file with no records to count (empty, or not Parquet at all): its bytes, as they came,
    go to quarantine with the reason beside them."""
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(landed.batch_id, landed.file_name)
    target = settings.quarantine_dir / f"{stem}{Path(landed.file_name).suffix}"
    tmp = temporary_beside(target)
    tmp.write_bytes(data)
    tmp.replace(target)
    _write_text(target.with_name(target.name + ".reason.txt"), reason + "\n")
    ledger.record_outcome(ledger.connect(settings.ledger_url), landed.batch_id, "rejected", 0, 0, 0, reason, None, str(target), None, None, None)
    return BatchValidation(landed.batch_id, landed.file_name, "rejected", 0, 0, 0, [reason], None, str(target), kind=landed.kind)


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write beside the target and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    write_parquet(frame, tmp)
    tmp.replace(path)
    return path


def _write_merged(spills: list[chunked.SpillWriter], path: Path, reason: str | None = None) -> Path:
    """The spills' rows in row order, written beside the target and renamed (as `_write_parquet`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    chunked.write_merged(spills, tmp, reason)
    tmp.replace(path)
    return path


def _write_array(values: np.ndarray, path: Path) -> Path:
    tmp = temporary_beside(path, ".tmp.npy")  # np.save adds .npy to a name without it
    np.save(tmp, values)
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
    get_run_logger().info("%d new landing file(s) in %s", len(files), settings.landing_dir.name)
    return files


# The pure check of data_checks.interactions, as a task a Dask task runner can run.
check_partition = task(name="check-partition", cache_policy=NO_CACHE)(interaction_checks.check_partition)


def check_on_task_runner(parts: list[pd.DataFrame], limits: ContractLimits) -> list[PartitionChecks]:
    """Each partition a `check-partition` task on the flow's task runner (a Dask cluster)."""
    futures = check_partition.map(parts, unmapped(limits))
    return [future.result() for future in futures]


@task(name="validate-batch", cache_policy=NO_CACHE)
def validate_batch(landed: LandedFile, settings: Settings) -> BatchValidation:
    partitioned = settings.validation_partitions > 1 and landed.kind == "interactions"
    result = validate_file(landed, settings, check_on_task_runner if partitioned else check_here)
    get_run_logger().info(
        "%s: %s, %d in, %d accepted, %d quarantined%s", result.file_name, result.status, result.rows_in,
        result.rows_accepted, result.rows_quarantined, f" ({'; '.join(result.reasons)})" if result.reasons else "",
    )
    if result.status == "rejected":
        events.batch_rejected(result.file_name, result.batch_id, landed.sha256, result.rows_in, result.reasons)
    return result


@task(name="find-undecided-batches", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def find_undecided_batches(settings: Settings) -> list[BatchValidation]:
    batches = undecided(settings)
    resumed = [b for b in batches if b.decision is not None]
    if resumed:
        get_run_logger().warning(
            "taking up again %d batch(es) whose update an earlier run did not finish: %s", len(resumed),
            "; ".join(f"{b.file_name} ({b.decision}, attempt {b.update_attempts + 1}: {b.update_error or 'that run stopped'})" for b in resumed),
        )
    return batches


# No retries: the claim is not idempotent; a retry after a commit whose answer was lost would
# read its own claim as another run's. A failed claim fails the batch's update, which is then
# recorded as failed and tried again by a later run.
@task(name="record-decision", cache_policy=NO_CACHE)
def record_decision(settings: Settings, batch_id: int, update: bool) -> bool:
    """Claim the batch's decision; False when a run working at the same time decided it first."""
    return ledger.record_decision(ledger.connect(settings.ledger_url), batch_id, "update" if update else "skip", settings.batch_lease_seconds)


class PipelineError(RuntimeError):
    """The pipeline itself cannot work (the ledger or MLflow is unreachable): the run stops."""


def pipeline_problem(settings: Settings) -> str | None:
    """Why the pipeline cannot work right now, or None when its stores answer."""
    try:
        ledger.batch(ledger.connect(settings.ledger_url), -1)  # a query that answers, whatever the ledger holds
    except Exception as error:
        return f"the ledger does not answer: {type(error).__name__}"
    try:
        mlflow_client(settings)
    except Exception as error:
        return f"MLflow does not answer: {type(error).__name__}"
    return None


def validation_failed(landed: LandedFile, error: str) -> BatchValidation:
    """A file whose validation raised: it stays `received`, and the next run validates it again."""
    reason = f"validation failed, tried again by the next run: {error}"
    return BatchValidation(landed.batch_id, landed.file_name, "received", 0, 0, 0, [reason], None, None, kind=landed.kind)


@task(name="record-batch-failure", cache_policy=NO_CACHE)
def record_batch_failure(settings: Settings, validation: BatchValidation, error: str) -> BatchOutcome:
    """Record that the update on one batch failed: ``failed`` (a later run tries again) or, out
    of attempts, ``parked``; the run goes on with the next batch. When the pipeline itself is
    down the attempt is not counted and the run stops (PipelineError)."""
    problem = pipeline_problem(settings)
    engine = ledger.connect(settings.ledger_url)
    decision = ledger.record_update_failure(engine, validation.batch_id, error, settings.max_batch_attempts, charge=problem is None)
    if problem is not None:
        raise PipelineError(f"{problem}; the update on {validation.file_name} failed ({error}) and is left to the next run")
    attempts = next(b.update_attempts for b in ledger.all_batches(engine) if b.id == validation.batch_id)
    outcome = BatchOutcome.of_validation(validation, with_reasons=False)
    outcome.status = f"update {decision}"
    if decision == "parked":
        outcome.reasons = [f"update failed {attempts} time(s), parked (python -m flows ledger --retry {validation.batch_id} re-opens it): {error}"]
    else:
        outcome.reasons = [f"update failed (attempt {attempts} of {settings.max_batch_attempts}), tried again by the next run: {error}"]
    get_run_logger().error("%s: %s", validation.file_name, outcome.reasons[0])
    return outcome


@task(name="finish-update", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def finish_update(settings: Settings, batch_id: int) -> None:
    """The batch's update ran to its end: release its claim."""
    ledger.finish_update(ledger.connect(settings.ledger_url), batch_id)


@task(name="publish-validation", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_validation(validation: BatchValidation, settings: Settings) -> None:
    """The batch's reports to MLflow, and a Prefect table: expectation, level, rows failed, share.
    An ignored entry has no report: its ledger record and the run's report say why."""
    if validation.status == "ignored":
        get_run_logger().warning("%s is not processed: %s", validation.file_name, "; ".join(validation.reasons))
        return
    log_validation_run(
        settings, validation.batch_id, validation.file_name, validation.status,
        {"rows_in": validation.rows_in, "rows_accepted": validation.rows_accepted, "rows_quarantined": validation.rows_quarantined},
        {row["expectation"]: row["rows_failed"] for row in validation.rule_table},
        settings.reports_dir,
    )
    if validation.rule_table:
        # Table cells are plain text in Prefect's UI; the description is Markdown.
        create_table_artifact(
            key=artifact_key(validation.file_name),
            table=validation.rule_table,
            description=md_text(f"{validation.file_name}: {validation.status}; " + "; ".join(validation.reasons[:3])),
        )
