"""Adapter: any shop's export -> landing files in the data contract, driven by a mapping file.

A mapping file (YAML or TOML, docs/mappings.md) says which source column is which contract
column, how times are written and what the shop calls each event type. Like the Online Retail
adapter, every source row becomes exactly one contract row and only the representation changes:
times become UTC text and event names the contract's. A value that cannot be read keeps its
source text, so validation quarantines the row instead of the adapter dropping it.
"""

from __future__ import annotations

import codecs
import glob
import logging
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import yaml

from data_checks.contract import (
    CATALOG_COLUMNS,
    CATALOG_PREFIX,
    EVENT_TYPES,
    INTERACTION_COLUMNS,
    INTERACTIONS_PREFIX,
    REQUIRED_INTERACTION_COLUMNS,
)
from data_checks.interactions import UTC_OFFSET
from data_checks.landing import KEY_COLUMNS, parquet_as_text
from data_checks.sources import write_landing_csv
from models.files import read_parquet

logger = logging.getLogger(__name__)

REQUIRED_CATALOG_COLUMNS = ("item_id", "title")
PERIODS = {"month": "%Y-%m", "week": "%G-W%V", "day": "%Y-%m-%d", "none": None}
TIME_FORMATS = ("iso8601", "unix_s", "unix_ms")
FILE_FORMATS = ("csv", "parquet")
NAME_PATTERN = re.compile(r"[a-z0-9-]{1,40}")
UTC_TEXT = "%Y-%m-%dT%H:%M:%SZ"
# Unix times outside what a pandas timestamp holds (1677-2262) cannot be placed.
UNIX_SECONDS_RANGE = (pd.Timestamp.min.value / 1e9 + 1, pd.Timestamp.max.value / 1e9 - 1)
MAX_COLUMNS_SHOWN = 20

TABLE_KEYS = ("files", "format", "delimiter", "encoding", "columns", "constants")
INTERACTION_KEYS = (*TABLE_KEYS, "time", "event_types")
TOP_KEYS = ("name", "period", "interactions", "catalog")
TIME_KEYS = ("format", "zone")


class MappingError(ValueError):
    """Everything wrong with one mapping file, one line per problem, each under its key path."""

    def __init__(self, path: Path, problems: list[str]):
        self.path, self.problems = path, problems
        super().__init__(f"{path}: not a valid source mapping (docs/mappings.md):\n" + "\n".join(f"  {p}" for p in problems))


class ConversionError(ValueError):
    """The mapping is valid but the files it names cannot be converted or landed as they are."""


@dataclass(frozen=True, kw_only=True)
class TimeSpec:
    format: str = "iso8601"  # iso8601 | unix_s | unix_ms | a strptime pattern
    zone: str = "UTC"  # the zone of times written without a UTC offset


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """One table's source files and how their columns become contract columns."""

    files: str  # a glob, relative to the mapping file's folder unless absolute
    columns: dict[str, str]  # contract column -> source column
    constants: dict[str, str] = field(default_factory=dict)  # contract column -> the value of every row
    format: str | None = None  # csv | parquet; None: from each file's extension
    delimiter: str = ","
    encoding: str = "utf-8"


@dataclass(frozen=True, kw_only=True)
class InteractionsSpec(TableSpec):
    time: TimeSpec = TimeSpec()
    event_types: dict[str, str] = field(default_factory=dict)  # source name as event_key() -> contract type


@dataclass(frozen=True, kw_only=True)
class SourceMapping:
    path: Path  # the mapping file: relative globs start from its folder
    name: str
    period: str
    interactions: InteractionsSpec
    catalog: TableSpec | None = None


def event_key(name: str) -> str:
    """A source's event name as it is matched: case, surrounding spaces and the difference between
    a space, a hyphen and an underscore ignored, as validation compares contract types."""
    return re.sub(r"[\s_-]+", "_", name.strip().casefold())


# --- reading and checking the mapping file ---------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load's loader, except that a key given twice is an error rather than the last one winning."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str):
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_mapping(path: Path) -> SourceMapping:
    """The mapping file at ``path``, checked whole: every problem is reported at once, as one
    MappingError naming the key path of each."""
    path = Path(path)
    document = _parse(path)
    problems: list[str] = []
    if not isinstance(document, dict):
        what = "empty" if document is None else _kind(document)
        raise MappingError(path, [f"the file is {what}, not a mapping with the keys {', '.join(TOP_KEYS)}"])
    _unknown_keys(document, "", TOP_KEYS, problems)
    name = _required_text(document, "name", "name", problems)
    if name is not None and not NAME_PATTERN.fullmatch(name):
        problems.append(f"name: {name!r} must be 1-40 lowercase letters, digits and hyphens (it names the landing files)")
    period = _text(document.get("period", "week"), "period", problems)
    if period is not None and period not in PERIODS:
        problems.append(f"period: {period!r} is not one of {', '.join(PERIODS)}")
    interactions = catalog = None
    if "interactions" not in document:
        problems.append("interactions: missing (the interaction files and their columns)")
    else:
        interactions = _table(document["interactions"], "interactions", problems)
    if "catalog" in document:
        catalog = _table(document["catalog"], "catalog", problems)
    if problems:
        raise MappingError(path, problems)
    return SourceMapping(path=path, name=name, period=period, interactions=interactions, catalog=catalog)


def _parse(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MappingError(path, [f"cannot be read: {error}"]) from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise MappingError(path, [f"not valid TOML: {error}"]) from None
    if suffix not in (".yaml", ".yml"):
        raise MappingError(path, [f"a mapping file ends in .yaml, .yml or .toml, not {suffix or 'no extension'!r}"])
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise MappingError(path, [f"not valid YAML{where}: {problem}"]) from None


def _table(raw: Any, key: str, problems: list[str]) -> TableSpec | None:
    """One table's section. Interactions and the catalog share the layout; only interactions
    have times and event types."""
    interactions = key == "interactions"
    contract = tuple(INTERACTION_COLUMNS) if interactions else tuple(CATALOG_COLUMNS)
    required = tuple(REQUIRED_INTERACTION_COLUMNS) if interactions else REQUIRED_CATALOG_COLUMNS
    if not isinstance(raw, dict):
        problems.append(f"{key}: must be a mapping with the keys {', '.join(INTERACTION_KEYS if interactions else TABLE_KEYS)}, not {_kind(raw)}")
        return None
    before = len(problems)
    _unknown_keys(raw, key, INTERACTION_KEYS if interactions else TABLE_KEYS, problems)
    files = _required_text(raw, "files", f"{key}.files", problems)
    file_format = _optional_text(raw, "format", f"{key}.format", problems)
    if file_format is not None and file_format not in FILE_FORMATS:
        problems.append(f"{key}.format: {file_format!r} is not one of {', '.join(FILE_FORMATS)}")
    delimiter = _optional_text(raw, "delimiter", f"{key}.delimiter", problems, blank=True)
    if delimiter is not None and len(delimiter) != 1:
        problems.append(f"{key}.delimiter: {delimiter!r} must be one character")
    encoding = _optional_text(raw, "encoding", f"{key}.encoding", problems)
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            problems.append(f"{key}.encoding: {encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)")
    if file_format == "parquet":
        for option in ("delimiter", "encoding"):
            if option in raw:
                problems.append(f"{key}.{option}: only for csv files (format is parquet)")

    columns = _column_table(raw, "columns", key, contract, problems)
    constants = _column_table(raw, "constants", key, contract, problems) if "constants" in raw else {}
    for column in required:
        if column not in columns:
            also = " (a required column cannot be a constant)" if column in constants else ""
            problems.append(f"{key}.columns.{column}: required: map it to a source column{also}")
    for column in constants:
        if column in columns:
            problems.append(f"{key}.constants.{column}: also mapped in {key}.columns: give one or the other")
    by_source: dict[str, list[str]] = {}
    for column, source in columns.items():
        by_source.setdefault(source, []).append(column)
    for source, targets in by_source.items():
        if len(targets) > 1:
            problems.append(f"{key}.columns: source column {source!r} is mapped to {' and '.join(targets)}: a source column is one contract column")

    time, event_types = TimeSpec(), {}
    if interactions:
        time = _time(raw.get("time", {}), problems)
        if "event_types" in raw:
            event_types = _event_types(raw["event_types"], problems)
            if "event_type" not in columns and "event_type" not in constants:
                problems.append("interactions.event_types: there is no event type to map: set interactions.columns.event_type "
                                "(or interactions.constants.event_type)")
        constant = constants.get("event_type")
        if constant is not None and event_types.get(event_key(constant), constant) not in EVENT_TYPES:
            problems.append(f"interactions.constants.event_type: {constant!r} is not a contract event type "
                            f"({', '.join(EVENT_TYPES)}) nor mapped to one in interactions.event_types")
    if len(problems) > before:
        return None
    options = {"format": file_format, "delimiter": delimiter or ",", "encoding": encoding or "utf-8"}
    if interactions:
        return InteractionsSpec(files=files, columns=columns, constants=constants, time=time, event_types=event_types, **options)
    return TableSpec(files=files, columns=columns, constants=constants, **options)


def _column_table(raw: dict, name: str, key: str, contract: tuple[str, ...], problems: list[str]) -> dict[str, str]:
    """``columns`` or ``constants``: contract column -> text (a source column or a value)."""
    where = f"{key}.{name}"
    if name not in raw:
        problems.append(f"{where}: missing (contract column: source column)")
        return {}
    table = raw[name]
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a mapping of contract column: {'source column' if name == 'columns' else 'value'}, not {_kind(table)}")
        return {}
    checked = {}
    for column, value in table.items():
        if column not in contract:
            problems.append(f"{where}.{column}: not a contract column ({', '.join(contract)})")
            continue
        text = _text(value, f"{where}.{column}", problems)
        if text is not None:
            checked[column] = text
    return checked


def _time(raw: Any, problems: list[str]) -> TimeSpec:
    if not isinstance(raw, dict):
        problems.append(f"interactions.time: must be a mapping with the keys {', '.join(TIME_KEYS)}, not {_kind(raw)}")
        return TimeSpec()
    _unknown_keys(raw, "interactions.time", TIME_KEYS, problems)
    time_format = _optional_text(raw, "format", "interactions.time.format", problems) or "iso8601"
    zone = _optional_text(raw, "zone", "interactions.time.zone", problems) or "UTC"
    if time_format not in TIME_FORMATS:
        problem = _strptime_problem(time_format)
        if problem:
            problems.append(f"interactions.time.format: {time_format!r} is not {', '.join(TIME_FORMATS)} or a strptime pattern "
                            f"such as '%d/%m/%Y %H:%M' ({problem})")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"interactions.time.zone: {zone!r} is not an IANA time zone (e.g. UTC, Europe/London, America/New_York)")
    else:
        if time_format.startswith("unix_") and ZoneInfo(zone) != ZoneInfo("UTC"):
            problems.append(f"interactions.time.zone: unix times count from 1970-01-01 UTC and have no zone; remove zone {zone!r}")
    return TimeSpec(format=time_format, zone=zone)


def _strptime_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot read times back, or None: a reference time written with it must be
    read back by pandas to the same day."""
    if "%" not in pattern:
        return "it has no % directive"
    reference = datetime(2011, 6, 15, 13, 45, 30, tzinfo=timezone.utc)
    try:
        parsed = pd.to_datetime(pd.Series([reference.strftime(pattern)]), format=pattern).iloc[0]
    except (ValueError, TypeError) as error:
        return str(error).split("\n")[0]
    if (parsed.year, parsed.month, parsed.day) != (2011, 6, 15):
        return "it does not hold the whole date: it needs the year, month and day (e.g. %Y, %m, %d)"
    return None


def _event_types(raw: Any, problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        problems.append(f"interactions.event_types: must be a mapping of source name: contract event type, not {_kind(raw)}")
        return {}
    table: dict[str, str] = {}
    given: dict[str, str] = {}
    for name, target in raw.items():
        where = f"interactions.event_types.{name}"
        if not isinstance(name, str):
            problems.append(f"{where}: the source name is {_kind(name)}, not text: put it in quotes")
            continue
        text = _text(target, where, problems)
        if text is None:
            continue
        if text not in EVENT_TYPES:
            problems.append(f"{where}: {text!r} is not a contract event type ({', '.join(EVENT_TYPES)})")
            continue
        key = event_key(name)
        if key in given:
            problems.append(f"{where}: the same name as {given[key]!r} once case, spaces and hyphens are ignored")
            continue
        given[key], table[key] = name, text
    return table


def _unknown_keys(raw: dict, key: str, allowed: tuple[str, ...], problems: list[str]) -> None:
    for name in raw:
        if name not in allowed:
            problems.append(f"{key + '.' if key else ''}{name}: unknown key (allowed: {', '.join(allowed)})")


def _required_text(raw: dict, name: str, where: str, problems: list[str]) -> str | None:
    if name not in raw:
        problems.append(f"{where}: missing")
        return None
    return _text(raw[name], where, problems)


def _optional_text(raw: dict, name: str, where: str, problems: list[str], blank: bool = False) -> str | None:
    return _text(raw[name], where, problems, blank) if name in raw else None


def _text(value: Any, where: str, problems: list[str], blank: bool = False) -> str | None:
    """``value`` if it is text. YAML reads unquoted yes/no/on/off as booleans and digits as
    numbers (Norway's code NO as False), so anything else asks for quotes."""
    if isinstance(value, str) and (blank or value.strip()):
        return value
    if isinstance(value, str) or value is None:
        problems.append(f"{where}: is empty")
    elif isinstance(value, (bool, int, float)):
        problems.append(f"{where}: {value!r} was read as {_kind(value)}, not text (YAML reads unquoted yes/no/on/off "
                        f"as booleans and digits as numbers): put it in quotes")
    else:
        problems.append(f"{where}: must be text, not {_kind(value)}")
    return None


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", dict: "a mapping", list: "a list", str: "text"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), f"a {type(value).__name__}")


# --- converting rows -------------------------------------------------------------------------


def read_source_file(path: Path, spec: TableSpec) -> pd.DataFrame:
    """A source file as text (pandas "string", empty cells NA), so nothing is guessed before the
    mapping reads it. Parquet ids stored as whole floats lose their ".0", as landing reads them;
    Parquet times without a zone become text the mapping's time zone places."""
    file_format = spec.format or _format_of(path)
    try:
        if file_format == "parquet":
            return _parquet_as_text(read_parquet(path), spec)
        encoding = "utf-8-sig" if codecs.lookup(spec.encoding).name == "utf-8" else spec.encoding
        return pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""], sep=spec.delimiter, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise ConversionError(f"{path}: the file is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: cannot be read as {file_format}: {error}") from None


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ConversionError(f"{path}: cannot tell its format from the name (.csv, .csv.gz, .parquet): set format in the mapping")


def _parquet_as_text(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]) and frame[column].dt.tz is None:
            frame[column] = frame[column].astype("string")
    text, notes = parquet_as_text(frame)
    # parquet_as_text knows ids by their contract names; the source may call them anything.
    for column in KEY_COLUMNS:
        source = spec.columns.get(column)
        if source in frame.columns and source != column:
            ids, id_notes = parquet_as_text(frame[[source]].set_axis([column], axis=1))
            text[source], notes = ids[column], notes + id_notes
    for note in notes:
        logger.warning("%s", note)
    return text


def interactions_to_contract(raw: pd.DataFrame, mapping: SourceMapping) -> pd.DataFrame:
    """One contract row per source row, in order, as text: times in UTC, event types the
    contract's. A time that cannot be read or placed, or an event name the mapping does not
    know, keeps its source text so validation quarantines the row."""
    spec = mapping.interactions
    contract = _columns(raw, spec, "interactions", tuple(INTERACTION_COLUMNS))
    source_times = contract["event_time"]
    times = utc_times(source_times, spec.time)
    contract["event_time"] = times.dt.strftime(UTC_TEXT).astype("string").where(times.notna(), source_times)
    if spec.event_types and "event_type" in contract.columns:
        names = contract["event_type"]
        mapped = names.str.strip().str.casefold().str.replace(r"[\s_-]+", "_", regex=True).map(spec.event_types)  # event_key
        contract["event_type"] = mapped.astype("string").where(mapped.notna(), names)
    return contract


def catalog_to_contract(raw: pd.DataFrame, mapping: SourceMapping) -> pd.DataFrame:
    """One catalog row per source row, in order, as text."""
    if mapping.catalog is None:
        raise ConversionError(f"{mapping.path}: declares no catalog")
    return _columns(raw, mapping.catalog, "catalog", tuple(CATALOG_COLUMNS))


def _columns(raw: pd.DataFrame, spec: TableSpec, key: str, contract: tuple[str, ...]) -> pd.DataFrame:
    missing = {column: source for column, source in spec.columns.items() if source not in raw.columns}
    if missing:
        shown = ", ".join(repr(c) for c in raw.columns[:MAX_COLUMNS_SHOWN])
        more = f" and {len(raw.columns) - MAX_COLUMNS_SHOWN:,} more" if len(raw.columns) > MAX_COLUMNS_SHOWN else ""
        named = ", ".join(f"{source!r} ({key}.columns.{column})" for column, source in missing.items())
        raise ConversionError(f"the source has no column {named}; its columns are {shown}{more}")
    values = {column: raw[source].astype("string") for column, source in spec.columns.items()}
    values |= {column: pd.Series(value, index=raw.index, dtype="string") for column, value in spec.constants.items()}
    return pd.DataFrame({column: values[column] for column in contract if column in values}, index=raw.index)


def utc_times(values: pd.Series, spec: TimeSpec) -> pd.Series:
    """Source time text as UTC times; NaT where a value does not parse, or names a local time a
    change of clocks makes ambiguous. A local time the clocks skip moves forward to the change."""
    stripped = values.astype("string").str.strip()
    if spec.format in ("unix_s", "unix_ms"):
        seconds = pd.to_numeric(stripped, errors="coerce").astype("float64") / (1000 if spec.format == "unix_ms" else 1)
        seconds = seconds.where(seconds.between(*UNIX_SECONDS_RANGE))
        return pd.to_datetime(seconds, unit="s", utc=True)
    times = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if spec.format == "iso8601":
        offset = stripped.str.contains(UTC_OFFSET, regex=True).fillna(False).astype(bool)
        if offset.any():
            times[offset] = pd.to_datetime(stripped[offset], utc=True, errors="coerce", format="ISO8601")
        # utc=True reads the naive ones as UTC wall clocks; tz_convert(None) takes the wall clock back.
        naive = pd.to_datetime(stripped[~offset], utc=True, errors="coerce", format="ISO8601").dt.tz_convert(None)
    elif "%z" in spec.format or "%Z" in spec.format:
        return pd.to_datetime(stripped, utc=True, errors="coerce", format=spec.format)
    else:
        offset = pd.Series(False, index=values.index)
        naive = pd.to_datetime(stripped, errors="coerce", format=spec.format)
    local = naive.dt.tz_localize(spec.zone, ambiguous="NaT", nonexistent="shift_forward")
    times[~offset] = local.dt.tz_convert("UTC")
    return times


# --- landing ---------------------------------------------------------------------------------


def source_files(mapping: SourceMapping, spec: TableSpec, key: str) -> list[Path]:
    """The files ``spec.files`` matches, sorted; a glob matching nothing is an error."""
    if Path(spec.files).is_absolute():
        matches = glob.glob(spec.files, recursive=True)
    else:
        folder = mapping.path.parent
        matches = [str(folder / match) for match in glob.glob(spec.files, root_dir=folder, recursive=True)]
    files = sorted(Path(match) for match in matches if Path(match).is_file())
    if not files:
        raise ConversionError(f"{mapping.path}: {key}.files {spec.files!r} matches no file (relative to {mapping.path.parent.resolve()})")
    return files


def write_landing(mapping: SourceMapping, landing_dir: Path, files: list[Path] | None = None) -> list[Path]:
    """Convert the source files (the mapping's glob, or ``files``) and write one interactions file
    per period (with period none, per source file: interactions-<name>-<file's stem>.csv), and
    one catalog file per catalog source file if the mapping declares a catalog
    (catalog-<name>-<file's stem>.csv: a catalog grows, and ingest keeps each item's newest
    row). Landing files are immutable once
    written (the ledger hashes them): one that exists is skipped when the new content is
    identical and is an error otherwise, checked before anything is written. Returns the paths
    written."""
    planned: list[tuple[Path, pd.DataFrame]] = []
    if mapping.catalog is not None:  # one file per catalog file: a catalog grows, and ingest upserts
        for path in source_files(mapping, mapping.catalog, "catalog"):
            catalog = _convert_files([path], mapping.catalog, lambda raw: catalog_to_contract(raw, mapping))
            planned.append((landing_dir / f"{CATALOG_PREFIX}-{mapping.name}-{_stem(path)}.csv", catalog))

    files = [Path(f) for f in files] if files is not None else source_files(mapping, mapping.interactions, "interactions")
    convert = lambda raw: interactions_to_contract(raw, mapping)  # noqa: E731
    stem = f"{INTERACTIONS_PREFIX}-{mapping.name}"
    if PERIODS[mapping.period] is None:  # one file per source file: a later export is a new file
        per_file = [(path, _convert_files([path], mapping.interactions, convert)) for path in files]
        interactions = pd.concat([rows for _, rows in per_file], ignore_index=True)
        planned += [(landing_dir / f"{stem}-{_stem(path)}.csv", rows) for path, rows in per_file]
    else:
        interactions = _convert_files(files, mapping.interactions, convert)
        for label, rows in interactions.groupby(period_labels(interactions["event_time"], mapping.period), sort=True):
            planned.append((landing_dir / f"{stem}-{label}.csv", rows))
    landed = sum(len(rows) for path, rows in planned if path.name.startswith(stem))
    if landed != len(interactions):  # the adapter's promise: every source row lands exactly once
        raise RuntimeError(f"{landed:,} interaction rows in landing files for {len(interactions):,} source rows")

    names = [path.name for path, _ in planned]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ConversionError(f"two source files would land as {', '.join(clashes)}: give them different names")
    landing_dir.mkdir(parents=True, exist_ok=True)
    new = [(path, rows) for path, rows in planned if not _already_landed(path, rows)]
    return [write_landing_csv(rows, path) for path, rows in new]


def _stem(path: Path) -> str:
    """A source file's name without its extensions ("events-2015-06.csv.gz": "events-2015-06")."""
    return path.name.split(".")[0]


def period_labels(event_time: pd.Series, period: str) -> pd.Series:
    """Each row's period, of the UTC time validation will read. Rows whose time cannot be read
    go with the first period: they are kept, and quarantined there."""
    times = pd.to_datetime(event_time, format=UTC_TEXT, utc=True, errors="coerce")
    labels = times.dt.strftime(PERIODS[period])
    return labels.fillna(labels.dropna().min() if labels.notna().any() else "unknown")


def _convert_files(files: list[Path], spec: TableSpec, convert: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """The files' contract rows, one per source row, concatenated in file order."""
    if not files:
        raise ConversionError("no source files to convert")
    frames, rows_read = [], 0
    for path in files:
        raw = read_source_file(path, spec)
        rows_read += len(raw)
        try:
            frames.append(convert(raw))
        except ConversionError as error:
            raise ConversionError(f"{path}: {error}") from None
    converted = pd.concat(frames, ignore_index=True)
    if len(converted) != rows_read:
        raise RuntimeError(f"{len(converted):,} contract rows for {rows_read:,} source rows of {', '.join(map(str, files))}")
    return converted


def _already_landed(path: Path, rows: pd.DataFrame) -> bool:
    """True if ``path`` holds exactly these rows, False if there is no such file; an error if it
    holds anything else."""
    if not path.exists():
        return False
    with tempfile.TemporaryDirectory() as scratch:
        fresh = write_landing_csv(rows, Path(scratch) / path.name).read_bytes()
    if path.read_bytes() == fresh:
        return True
    raise ConversionError(
        f"{path} already exists with other content: landing files are immutable once written (the ledger hashes "
        "them). Convert only the files of new periods, or land these rows under another mapping name"
    )
