"""A landing file's bytes as a frame of text, and its records counted apart from that parse.

The bytes are read once by the caller, which hashes the same bytes it hands here: the content
the ledger names is the content validated. A CSV holds one record per line; its records are
counted from the lines themselves, so a stray quote that makes the parser fold lines into one
value (or stop) is caught: the counts disagree and the file is rejected whole, each of its lines
quarantined. Parquet's own row count is compared the same way.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.files import read_parquet

KEY_COLUMNS = ("user_id", "item_id", "order_id")  # ids a Parquet file may store as numbers
# Whole numbers up to this are exact in a float64: a float id column is written without ".0".
EXACT_FLOAT_INTEGER = 2**53


def output_stem(batch_id: int, file_name: str) -> str:
    """The name a batch's accepted, quarantine and report files share: the ledger id first, so
    two files of one stem (a.csv, a.parquet) or a file landed again never overwrite each other."""
    return f"{batch_id:06d}-{Path(file_name).stem}"


class EmptyFileError(ValueError):
    pass


def is_parquet(name: str) -> bool:
    return name.lower().endswith(".parquet")


def count_records(data: bytes, parquet: bool) -> int:
    """Records the file holds, counted without the parser: Parquet's row count from its footer;
    for a CSV, the lines that are not blank (a line break is \\n, \\r\\n or \\r, as the parser
    reads them), less the header."""
    if parquet:
        return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    return max(0, sum(1 for line in data.splitlines() if line.strip()) - 1)


def record_lines(data: bytes, encoding: str) -> pd.DataFrame:
    """The data lines of a CSV (blank lines and the header left out) as text with their line
    numbers: how a file whose records cannot be trusted is quarantined, one row per record."""
    numbered = [(number, line) for number, line in enumerate(data.splitlines(), start=1) if line.strip()][1:]
    return pd.DataFrame(
        {
            "line_number": pd.Series([number for number, _ in numbered], dtype="int64"),
            "line": pd.Series([line.decode(encoding, errors="replace") for _, line in numbered], dtype="string"),
        }
    )


def decode(data: bytes, encoding: str) -> tuple[str, list[str]]:
    """Text in ``encoding`` (a UTF-8 byte order mark dropped). A byte sequence that is not valid
    there becomes U+FFFD, which the row rules quarantine as an error, and a note counts them."""
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    text = data.decode(codec, errors="replace")
    bad = text.count("\ufffd")
    notes = [f"{bad:,} byte sequence(s) not valid {encoding}: shown as U+FFFD, their rows quarantined (set landing_encoding if the producer writes another encoding)"] if bad else []
    return text, notes


def read_landing_bytes(data: bytes, name: str, encoding: str = "utf-8") -> tuple[pd.DataFrame, list[str]]:
    """The file's rows as text (pandas "string", missing values as NA), so nothing is lost or
    guessed before validation, and notes on how it was read."""
    if not data:
        raise EmptyFileError("the file is empty (0 bytes)")
    if is_parquet(name):
        return parquet_as_text(read_parquet(data))
    text, notes = decode(data, encoding)
    return pd.read_csv(io.StringIO(text), dtype="string", keep_default_na=False, na_values=[""]), notes


def whole_numbers(values: pd.Series) -> bool:
    """Whether every present value of a float column is a whole number a float64 holds exactly."""
    present = values.dropna()
    return bool(np.isfinite(present).all() and (present == np.floor(present)).all() and (present.abs() < EXACT_FLOAT_INTEGER).all())


def parquet_as_text(frame: pd.DataFrame, whole_float_ids: frozenset[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Typed Parquet columns as the text a CSV would hold. Ids stored as numbers are written as
    their decimal text (a float id of 17850.0 as "17850"), and a note says so: Parquet cannot
    keep a leading zero the source had, so ids belong in string columns. Times without a zone
    are read as UTC, and a note says that too. ``whole_float_ids``: the float id columns holding
    whole numbers only, when ``frame`` is a part of the file (decided on the whole column)."""
    notes, text = [], pd.DataFrame(index=frame.index)
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_float_dtype(values) and column in KEY_COLUMNS:
            whole = whole_numbers(values) if whole_float_ids is None else column in whole_float_ids
            if whole:
                values = values.astype("Int64")
                notes.append(f"{column} is a float column: whole numbers read without '.0' (store ids as strings)")
        elif pd.api.types.is_integer_dtype(values) and column in KEY_COLUMNS:
            notes.append(f"{column} is an integer column: read as decimal text, without any leading zeros the source had (store ids as strings)")
        elif pd.api.types.is_datetime64_any_dtype(values):
            if values.dt.tz is None:
                values = values.dt.tz_localize("UTC")
                notes.append(f"{column} has no time zone: read as UTC")
            values = values.dt.tz_convert("UTC")
        text[column] = values.astype("string")
    return text, notes
