"""How the text of a landing file becomes values: numbers, missing ids, bad bytes, timestamps.

Risks guarded: a value that cannot be a count (inf, 1e30, 2**63) wrapping round to a negative
Int64 and hiding as a cancellation, so a batch of them is never rejected; "NULL" or "N/A" trained
on as a real user or item; bytes the file's encoding could not decode (U+FFFD) accepted as an
id; a naive timestamp given the UTC offset of the row before it, so the same row means another
time depending on its neighbours (and on the partition it is checked in).
"""

from __future__ import annotations

import pandas as pd
import pytest

from data_checks import interactions
from data_checks import contract
from data_checks.contract import REASON_COLUMN
from data_checks.interactions import coerce, validate_interactions
from tests.data.test_interactions_suite import LIMITS, good_rows
from tests.data.test_partitioned_validation import assert_same_split


def one_bad_row(column: str, value: str) -> pd.DataFrame:
    raw = good_rows(40)
    raw.loc[7, column] = value
    return raw


def reasons_of(raw: pd.DataFrame, max_bad_row_share: float = 0.2) -> list[str]:
    result = validate_interactions(raw, max_bad_row_share, LIMITS)
    assert result.ge_unexpected == result.rule_failures  # GE and the masks count the same
    return result.quarantined[REASON_COLUMN].tolist()


# A count is a whole number that a float64 holds exactly (magnitude below 2**53); anything else,
# infinity and overflow included, does not parse.
NOT_A_COUNT = ["inf", "-inf", "Infinity", "nan", "1e30", "1e400", "9223372036854775808", "-9223372036854775809",
               "18446744073709551616", "9007199254740992", "2.5e0"]


@pytest.mark.parametrize("value", NOT_A_COUNT)
def test_a_quantity_that_is_not_an_exact_whole_number_is_an_error(value):
    assert reasons_of(one_bad_row("quantity", value)) == ["quantity_present"]


@pytest.mark.parametrize("value", ["inf", "1e30", "9223372036854775808"])
def test_a_batch_of_impossible_quantities_is_rejected(value):
    raw = good_rows(10)
    raw["quantity"] = value
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.status == "rejected"
    assert result.reasons == [f"column quantity is not a whole number: 10 of 10 values do not parse (e.g. {value!r})"]


@pytest.mark.parametrize(("value", "count"), [("1e3", 1000), ("1000.0", 1000), (" 3 ", 3), ("+3", 3), ("9007199254740991", 2**53 - 1)])
def test_a_whole_number_in_any_notation_is_that_count(value, count):
    typed = coerce(one_bad_row("quantity", value))
    assert typed.loc[7, "quantity"] == count


@pytest.mark.parametrize(
    ("value", "rule"),
    [("inf", "price_plausible"), ("1e400", "price_present"), ("-inf", "price_not_negative"), ("nan", "price_present"),
     ("NaN", "price_present"), ("1e308", "price_plausible")],
)
def test_an_impossible_price_is_an_error(value, rule):
    assert reasons_of(one_bad_row("price", value)) == [rule]


MISSING_RULES = {"user_id": "anonymous_user", "item_id": "item_id_present", "order_id": "order_id_present", "country": "country_present"}
# How exports write "no value" (databases, pandas, spreadsheets), in any case, with spaces around.
MARKERS = ["NULL", "null", "None", "nan", "NaN", "NA", "N/A", "#N/A", "<NA>"]
SPELLINGS = [*MARKERS, " null ", "Null", "none", "n/a", "#n/a", "<na>", "na", "NAN", "\tNone "]


def test_the_contract_names_the_markers():
    assert {m.casefold() for m in contract.NULL_MARKERS} == {m.casefold() for m in MARKERS}


@pytest.mark.parametrize("column", MISSING_RULES)
@pytest.mark.parametrize("value", SPELLINGS)
def test_a_null_marker_is_a_missing_value(column, value):
    raw = one_bad_row(column, value)
    assert reasons_of(raw) == [MISSING_RULES[column]]
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.quarantined[column].tolist() == [value]  # the quarantine keeps the text as it came


@pytest.mark.parametrize("value", ["NULLABLE", "nano", "N/A2", "Nana", "NA-1", "n a"])
def test_an_id_that_only_resembles_a_marker_is_kept_as_written(value):
    raw = one_bad_row("item_id", value)
    assert reasons_of(raw) == []
    assert coerce(raw).loc[7, "item_id"] == value


@pytest.mark.parametrize("column", [*MISSING_RULES, "event_type"])
def test_text_the_encoding_could_not_decode_is_an_error(column):
    raw = good_rows(40).assign(event_type="purchase").astype("string")
    raw.loc[7, column] = "Caf\ufffd"
    # An event type that does not decode is also none of the contract's.
    assert reasons_of(raw) == (["event_type_known;text_encoding"] if column == "event_type" else ["text_encoding"])
    raw.loc[:9, column] = "Caf\ufffd"  # a quarter of the rows: past the share, the batch is rejected
    assert validate_interactions(raw, 0.2, LIMITS).status == "rejected"


def test_an_undecodable_value_in_several_columns_is_one_error_row():
    raw = good_rows(40)
    raw.loc[7, ["user_id", "item_id", "country"]] = ["\ufffd", "P\ufffd1", "Espa\ufffda"]
    assert reasons_of(raw) == ["text_encoding"]


MIXED_TIMES = ["2011-01-04T10:00:00+01:00", "2011-01-04 10:00:00", "2011-01-04T10:00:00Z", "2011-01-04 10:00:00",
               "2011-01-04T10:00:00-0500", "2011-01-04", "2011-01-04T10:00:00 +01:00", "2011-01-04T10", "20110104T100000+0100"]
# Each value on its own: an offset is converted to UTC; no offset is read as UTC.
MIXED_TIMES_UTC = ["2011-01-04 09:00", "2011-01-04 10:00", "2011-01-04 10:00", "2011-01-04 10:00",
                   "2011-01-04 15:00", "2011-01-04 00:00", "2011-01-04 09:00", "2011-01-04 10:00", "2011-01-04 09:00"]


def test_each_timestamp_is_read_on_its_own():
    raw = good_rows(len(MIXED_TIMES))
    raw["event_time"] = pd.array(MIXED_TIMES, dtype="string")
    expected = pd.Series(pd.to_datetime(MIXED_TIMES_UTC, utc=True), name="event_time").astype("datetime64[ns, UTC]")
    pd.testing.assert_series_equal(coerce(raw)["event_time"], expected)
    # Whatever its neighbours: each value alone, as pandas reads a single value.
    for value, typed in zip(MIXED_TIMES, coerce(raw.iloc[::-1])["event_time"].iloc[::-1]):
        assert typed == pd.to_datetime(pd.Series([value]), utc=True, format="ISO8601")[0], value


def test_naive_timestamps_are_counted_for_the_note():
    raw = good_rows(len(MIXED_TIMES) + 2)
    raw["event_time"] = pd.array([*MIXED_TIMES, "yesterday", pd.NA], dtype="string")
    # The naive ones that parse: "2011-01-04 10:00:00" twice, "2011-01-04", "2011-01-04T10".
    assert interactions.naive_time_count(raw) == 4
    assert interactions.naive_time_count(good_rows(5)) == 0


def test_mixed_timestamps_and_markers_split_the_same_in_partitions():
    raw = pd.concat([good_rows(60)] * 2, ignore_index=True)
    raw["order_id"] = pd.array([f"o{i // 3}" for i in range(len(raw))], dtype="string")
    raw["user_id"] = pd.array([f"u{i // 3}" for i in range(len(raw))], dtype="string")
    raw["event_time"] = pd.array([MIXED_TIMES[i % len(MIXED_TIMES)].replace("2011", "2020") for i in range(len(raw))], dtype="string")
    raw.loc[[3, 50], "user_id"] = ["NULL", "none"]
    raw.loc[[10, 70], "order_id"] = ["N/A", "null"]
    raw.loc[20, "item_id"] = "\ufffd"
    raw.loc[30, "quantity"] = "1e30"
    assert_same_split(raw)
