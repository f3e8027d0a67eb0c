"""A large interactions batch validated in pieces, in bounded memory, with the split of one piece.

Pass 1 streams the landing file once (never all its bytes or rows at once): it hashes and counts
the records of the bytes as they pass, parses them as `read_landing_bytes` does, and spills
every row, with its row number, to one of K piece files by its order (`part_of`: every line of
an order, or a row without an order with the rest of its user's rows, in one piece), so the
contract's cross-row rules (one user per order, the order's size, exact repeats) see in a piece
what they see in the whole batch. Pass 2 checks one piece at a time and keeps only the counts the
batch-level verdicts need, spilling the piece's accepted and quarantined rows again. The outputs
are written by merging the pieces' spills on the row number: in the file's row order.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_checks.contract import INTERACTION_COLUMNS, REASON_COLUMN, REQUIRED_INTERACTION_COLUMNS
from data_checks.interactions import (
    CheckPartitions,
    ContractLimits,
    EarlierBatches,
    ParseCount,
    earlier_batch_rule,
    merge_parse_counts,
    naive_time_count,
    not_applicable,
    part_of,
    partition_by_order,
    row_fingerprints,
    row_rules,
    wrong_type_columns,
)
from data_checks.landing import KEY_COLUMNS, is_parquet, parquet_as_text, whole_numbers
from data_checks.rules import RuleChecks, RuleCount, check_rules, reason_strings, schema_problems

ROW = "_row"  # a row's number in the file (0 = the first record), carried through the spills
SPILL_ROWS = 100_000  # rows parsed, spilled and merged at a time
READ_BYTES = 1 << 22


def text_codec(encoding: str) -> str:
    """The codec `landing.decode` reads ``encoding`` with (a UTF-8 byte order mark dropped)."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


class RecordCounter:
    """The records of a CSV fed in blocks, counted as `landing.count_records` counts them: the
    lines that are not blank (a break is \\n, \\r\\n or \\r), less the header. A \\r\\n split
    between two blocks counts an extra line, but a blank one, which is not counted."""

    def __init__(self) -> None:
        self.lines = 0
        self._open = False  # the line the last block ended inside has a non-blank byte

    def feed(self, data: bytes) -> None:
        """The next block; an empty one is the end of the file."""
        if not data:
            self.lines += self._open
            self._open = False
            return
        lines = data.splitlines(keepends=True)
        filled = list(map(bool, map(bytes.strip, lines)))
        filled[0] = filled[0] or self._open
        ended = lines[-1].endswith((b"\n", b"\r"))
        self.lines += sum(filled) if ended else sum(filled[:-1])
        self._open = False if ended else filled[-1]

    @property
    def records(self) -> int:
        return max(0, self.lines - 1)


class LandingStream(io.TextIOBase):
    """A CSV landing file's text, read front to back for the parser, decoded as `landing.decode`
    decodes it; on the way, the sha256 of its bytes, its records (`RecordCounter`) and the
    characters shown as U+FFFD."""

    def __init__(self, handle: BinaryIO, encoding: str) -> None:
        self._handle = handle
        self._decoder = codecs.getincrementaldecoder(text_codec(encoding))(errors="replace")
        self.digest = hashlib.sha256()
        self.counter = RecordCounter()
        self.replaced = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        """At most about ``size`` characters (READ_BYTES when unsized, never the whole file);
        "" only at the end of the file."""
        while True:  # a block may end inside a character: read on until it decodes to something
            data = self._handle.read(size if size and size > 0 else READ_BYTES)
            self.digest.update(data)
            self.counter.feed(data)
            text = self._decoder.decode(data, final=not data)
            if text or not data:
                self.replaced += text.count("\ufffd")
                return text


def more_records_than(path: Path, limit: int) -> int | None:
    """The file's records when there are more than ``limit``, else None (without reading a file
    too small to hold more). A Parquet file that does not open is None: the one-piece path says why."""
    if is_parquet(path.name):
        try:
            records = pq.ParquetFile(path).metadata.num_rows
        except Exception:
            return None
        return records if records > limit else None
    if path.stat().st_size < 2 * limit + 3:  # a record is a byte and a line break at least
        return None
    counter = RecordCounter()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(READ_BYTES), b""):
            counter.feed(block)
    counter.feed(b"")
    return counter.records if counter.records > limit else None


class SpillWriter:
    """Frames appended to one Parquet file, row groups of at most SPILL_ROWS; the schema of the
    first frame (later ones cast to it). ``output_schema``: the same columns without ROW, with
    the pandas metadata `DataFrame.to_parquet(index=False)` writes (see `write_merged`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.output_schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self.output_schema = pa.Schema.from_pandas(frame.drop(columns=ROW), preserve_index=False)
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table.cast(self._writer.schema), row_group_size=SPILL_ROWS)
        self.rows += len(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass
class Spilled:
    """A landing file spilled to K piece files, and what pass 1 counted on the way."""

    pieces: list[SpillWriter]
    columns: list[str]
    rows: int  # parsed
    records: int  # counted apart from the parse
    sha256: str
    notes: list[str]
    head: pd.DataFrame  # the first rows, for the batch-level expectations


def spill_landing(path: Path, encoding: str, pieces: int, folder: Path) -> Spilled:
    """Pass 1: the file's rows as text in ``pieces`` piece files under ``folder``, by order."""
    writers = [SpillWriter(folder / f"raw-{p}.parquet") for p in range(pieces)]
    try:
        if is_parquet(path.name):
            return _spill_parquet(path, writers, folder)
        return _spill_csv(path, encoding, writers)
    finally:
        for writer in writers:
            writer.close()


def _spill(chunks: Iterator[pd.DataFrame], writers: list[SpillWriter]) -> tuple[int, pd.DataFrame | None]:
    rows, head = 0, None
    for chunk in chunks:
        chunk = chunk.reset_index(drop=True)  # as validate_interactions does
        if head is None:
            head = chunk.head(1000)
        chunk.insert(len(chunk.columns), ROW, np.arange(rows, rows + len(chunk), dtype=np.int64))
        rows += len(chunk)
        if len(writers) == 1:
            writers[0].write(chunk)
            continue
        piece = part_of(chunk, len(writers))
        for p, writer in enumerate(writers):
            writer.write(chunk[piece == p])
    return rows, head


def _spill_csv(path: Path, encoding: str, writers: list[SpillWriter]) -> Spilled:
    with path.open("rb") as handle:
        stream = LandingStream(handle, encoding)
        reader = pd.read_csv(stream, dtype="string", keep_default_na=False, na_values=[""], chunksize=SPILL_ROWS)
        with reader:
            rows, head = _spill(reader, writers)
        while stream.read(READ_BYTES):  # the bytes after the last record: hashed and counted too
            pass
    bad = stream.replaced
    notes = [f"{bad:,} byte sequence(s) not valid {encoding}: shown as U+FFFD, their rows quarantined (set landing_encoding if the producer writes another encoding)"] if bad else []
    return Spilled(writers, [] if head is None else list(head.columns), rows, stream.counter.records, stream.digest.hexdigest(), notes, head)


def _spill_parquet(path: Path, writers: list[SpillWriter], folder: Path) -> Spilled:
    # Parquet is read from its end (the footer first): the bytes hashed must be the bytes parsed,
    # so the file is copied once, hashed on the way, and the copy read.
    copy, digest = folder / "landing.parquet", hashlib.sha256()
    with path.open("rb") as source, copy.open("wb") as target:
        for block in iter(lambda: source.read(READ_BYTES), b""):
            digest.update(block)
            target.write(block)
    parquet = pq.ParquetFile(copy)
    schema = parquet.schema_arrow
    float_ids = [name for name in schema.names if name in KEY_COLUMNS and pa.types.is_floating(schema.field(name).type)]
    whole = frozenset(name for name in float_ids if all(
        whole_numbers(batch.column(0).to_pandas()) for batch in parquet.iter_batches(batch_size=SPILL_ROWS, columns=[name])
    ))
    notes: list[list[str]] = []

    def chunks() -> Iterator[pd.DataFrame]:
        for batch in parquet.iter_batches(batch_size=SPILL_ROWS):
            text, chunk_notes = parquet_as_text(pa.Table.from_batches([batch]).replace_schema_metadata(schema.metadata).to_pandas(), whole)
            notes.append(chunk_notes)
            yield text

    rows, head = _spill(chunks(), writers)
    columns = schema.names if head is None else list(head.columns)
    return Spilled(writers, columns, rows, parquet.metadata.num_rows, digest.hexdigest(), notes[0] if notes else [], head)


def schema_fits(spilled: Spilled) -> bool:
    """The batch-level expectations (the contract's columns, some rows) hold, on the first rows."""
    head = spilled.head if spilled.head is not None else pd.DataFrame(columns=spilled.columns)
    problems, _ = schema_problems(head, list(REQUIRED_INTERACTION_COLUMNS), list(INTERACTION_COLUMNS), "interactions")
    return not problems


@dataclass
class PieceResult:
    """What validating a batch in pieces decided: the verdict and counts a `ValidationResult`
    holds (the reports and the ledger read the same names), its rows in spill files."""

    status: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    batch_reasons: list[str] = field(default_factory=list)
    rule_counts: list[RuleCount] = field(default_factory=list)
    ge_result: dict | None = None
    not_applicable: list[str] = field(default_factory=list)
    accepted: list[SpillWriter] = field(default_factory=list)  # typed rows + ROW; empty when rejected
    quarantined: list[SpillWriter] = field(default_factory=list)  # raw rows + reason + ROW
    quarantine_reason: str | None = None  # rejected whole: every raw row, with this reason
    fingerprints: np.ndarray | None = None  # of the accepted rows
    min_event_time: pd.Timestamp | None = None
    max_event_time: pd.Timestamp | None = None
    naive_times: int = 0

    @property
    def reasons(self) -> list[str]:
        return self.batch_reasons + [f"{c.rows} rows: {c.rule}" for c in self.rule_counts if c.rows]


@dataclass
class _Totals:
    rows: int = 0
    errors: int = 0
    rule_rows: dict[str, int] = field(default_factory=dict)
    ge_counts: dict[str, int] = field(default_factory=dict)
    ge_results: list[dict] = field(default_factory=list)
    parse_counts: list[dict[str, ParseCount]] = field(default_factory=list)
    fingerprints: list[np.ndarray] = field(default_factory=list)
    times: list[pd.Timestamp] = field(default_factory=list)  # each piece's first and last accepted event
    naive_times: int = 0

    def add(self, checks: RuleChecks, errors: pd.Series, parse_counts: dict[str, ParseCount]) -> None:
        self.parse_counts.append(parse_counts)
        self.rows += len(errors)
        self.errors += int(errors.sum())
        for rule, broken in checks.masks.items():
            self.rule_rows[rule] = self.rule_rows.get(rule, 0) + int(broken.sum())
        for rule, count in checks.ge_counts.items():
            self.ge_counts[rule] = self.ge_counts.get(rule, 0) + count
        self.ge_results.append(checks.ge_result)


def read_piece(writer: SpillWriter) -> pd.DataFrame:
    """A piece's raw rows, indexed by their row number in the file."""
    return pq.read_table(writer.path).to_pandas().set_index(ROW).rename_axis(None)


def validate_pieces(
    spilled: Spilled, folder: Path, max_bad_row_share: float, limits: ContractLimits, check: CheckPartitions,
    partitions: int = 1, earlier: EarlierBatches | None = None, fingerprints: bool = True,
) -> PieceResult:
    """Pass 2: each piece checked in turn (in ``partitions`` parts through ``check``), then the
    verdicts `validate_interactions` reaches, on the whole batch's counts."""
    columns = tuple(c for c in INTERACTION_COLUMNS if c in spilled.columns)
    rules = row_rules(limits, columns)
    if earlier is not None:
        rules = [*rules, earlier_batch_rule()]
    errors_of = [r.name for r in rules if r.level == "error"]
    accepted = [SpillWriter(folder / f"accepted-{i}.parquet") for i in range(len(spilled.pieces))]
    quarantined = [SpillWriter(folder / f"quarantined-{i}.parquet") for i in range(len(spilled.pieces))]
    totals = _Totals()
    try:
        for piece, accepted_to, quarantined_to in zip(spilled.pieces, accepted, quarantined):
            if not piece.rows:
                continue
            raw = read_piece(piece)
            totals.naive_times += naive_time_count(raw) if "event_time" in raw.columns else 0
            parts = partition_by_order(raw, partitions)
            kept, set_aside = [], []
            for part, checked in zip(parts, check(parts, limits)):
                checks = checked.checks
                if earlier is not None:  # a function of each row alone: per part as on the whole batch
                    seen = pd.DataFrame({"_earlier_batch": earlier(checked.typed).astype("int64")}, index=checked.typed.index)
                    checks = checks.join(check_rules(seen, [earlier_batch_rule()], "interactions-history"))
                masks = checks.masks
                errors, bad = masks[errors_of].any(axis=1), masks.any(axis=1)
                totals.add(checks, errors, checked.parse_counts)
                kept.append(checked.typed.loc[~bad, [c for c in checked.typed.columns if not c.startswith("_")]])
                quarantine = part[bad.to_numpy()].copy()
                quarantine[REASON_COLUMN] = reason_strings(masks, bad)
                set_aside.append(quarantine)
            good, quarantine = pd.concat(kept).sort_index(), pd.concat(set_aside).sort_index()
            if len(good):
                if fingerprints:
                    totals.fingerprints.append(row_fingerprints(good).to_numpy())
                totals.times += [good["event_time"].min(), good["event_time"].max()]
            accepted_to.write(with_row_column(good))
            quarantined_to.write(with_row_column(quarantine))
    finally:
        for writer in (*accepted, *quarantined):
            writer.close()
    return _decide(spilled, totals, rules, columns, max_bad_row_share, accepted, quarantined)


def with_row_column(frame: pd.DataFrame) -> pd.DataFrame:
    """A piece's rows with their row number (the index) as the last column, ROW."""
    return frame.assign(**{ROW: frame.index.to_numpy(dtype=np.int64)}).reset_index(drop=True)


def _decide(
    spilled: Spilled, totals: _Totals, rules: list, columns: tuple[str, ...], max_bad_row_share: float,
    accepted: list[SpillWriter], quarantined: list[SpillWriter],
) -> PieceResult:
    rows = spilled.rows
    wrong_types = wrong_type_columns(merge_parse_counts(totals.parse_counts))
    if wrong_types:
        return _rejected(spilled, wrong_types, [], None, totals)
    counts = [RuleCount(r.name, r.level, r.description, totals.rule_rows[r.name], totals.ge_counts[r.name]) for r in rules]
    ge_result = {"success": all(r.get("success") for r in totals.ge_results), "partitions": totals.ge_results}
    share = totals.errors / rows  # what errors.mean() gives on the whole batch
    if share > max_bad_row_share:
        reason = f"{share:.1%} of rows have errors (more than {max_bad_row_share:.0%}): the producer looks broken"
        rejected = _rejected(spilled, [reason], counts, ge_result, totals)
        rejected.not_applicable = not_applicable(columns)  # as validate_interactions sets it after the split
        return rejected
    rows_accepted = sum(w.rows for w in accepted)
    return PieceResult(
        "partially_accepted" if rows_accepted < rows else "accepted", rows, rows_accepted, sum(w.rows for w in quarantined),
        [], counts, ge_result, not_applicable(columns), accepted, quarantined,
        fingerprints=np.concatenate(totals.fingerprints) if totals.fingerprints else np.zeros(0, dtype=np.int64),
        min_event_time=min(totals.times, default=None), max_event_time=max(totals.times, default=None),
        naive_times=totals.naive_times,
    )


def _rejected(spilled: Spilled, reasons: list[str], counts: list[RuleCount], ge_result: dict | None, totals: _Totals) -> PieceResult:
    """As `rules.rejected`: every raw row quarantined with the reasons."""
    return PieceResult(
        "rejected", spilled.rows, 0, spilled.rows, reasons, counts, ge_result, quarantined=spilled.pieces,
        quarantine_reason="batch rejected: " + "; ".join(reasons), naive_times=totals.naive_times,
    )


def merged_by_row(paths: list[Path]) -> Iterator[pa.Table]:
    """The rows of spill files, each in row order, as one stream in row order, SPILL_ROWS of
    each file at a time."""
    streams = [pq.ParquetFile(path).iter_batches(batch_size=SPILL_ROWS) for path in paths]

    def pull(stream) -> pa.Table | None:
        batch = next(stream, None)
        return None if batch is None else pa.Table.from_batches([batch])

    held = [pull(stream) for stream in streams]
    while any(table is not None for table in held):
        live = [i for i, table in enumerate(held) if table is not None]
        # Every row up to the smallest last row number held is here: none of them is still to come.
        cutoff = min(held[i][ROW][-1].as_py() for i in live)
        out = []
        for i in live:
            table = held[i]
            taken = int(np.searchsorted(table[ROW].to_numpy(), cutoff, side="right"))
            out.append(table.slice(0, taken))
            held[i] = table.slice(taken) if taken < table.num_rows else pull(streams[i])
        merged = pa.concat_tables([t.cast(out[0].schema) for t in out])
        yield merged.take(pc.sort_indices(merged[ROW]))


def write_merged(writers: list[SpillWriter], path: Path, reason: str | None = None) -> int:
    """The spills' rows, in row order, to ``path`` as `DataFrame.to_parquet(index=False)` writes
    them (without ROW; with ``reason`` as REASON_COLUMN on every row, as `rules.rejected` adds it)."""
    written = [w for w in writers if w.rows]
    schema = written[0].output_schema
    if reason is not None:  # the schema of one such row, as `rules.rejected` builds it
        row = pd.DataFrame({c: pd.Series([pd.NA], dtype="string") for c in schema.names}).assign(**{REASON_COLUMN: reason})
        schema = pa.Schema.from_pandas(row, preserve_index=False)
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for table in merged_by_row([w.path for w in written]):
            table = table.drop_columns([ROW])
            if reason is not None:
                table = table.append_column(REASON_COLUMN, pa.array([reason] * table.num_rows, pa.string()))
            writer.write_table(table.cast(schema))
            rows += table.num_rows
    return rows


def pieces_for(records: int, chunk_rows: int) -> int:
    """How many pieces a batch of ``records`` is validated in: about ``chunk_rows`` rows each."""
    return math.ceil(records / chunk_rows)
