"""The interaction batch contract: batch-level checks, then the row rules (see rules.py).

What the contract says about the rows real shops send (docs/your-data.md, "The data contract"):
defects (missing ids, values that do not parse, impossible prices or dates) are errors;
cancellations, write-offs, anonymous checkouts, non-product lines (postage, fees), free items,
exact duplicates and outlier quantities are known kinds of rows kept out of training by policy.
Every such row is quarantined under the name of the rule it broke; none is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from data_checks.contract import (
    DEFAULT_EVENT_TYPE,
    EVENT_TYPES,
    INTERACTION_COLUMNS,
    NULL_MARKERS,
    REQUIRED_INTERACTION_COLUMNS,
    empty_interactions,
    event_types_of,
    with_contract_columns,
)
from data_checks.rules import (
    RowRule,
    RuleChecks,
    ValidationResult,
    between,
    check_rules,
    not_in_set,
    not_matching,
    not_null,
    rejected,
    schema_problems,
    split_rows,
)

NUMERIC_COLUMNS = ("quantity", "price")
# A column where more than this share of the values does not parse has the wrong type.
WRONG_TYPE_SHARE = 0.5
ID_COLUMNS = ("user_id", "item_id", "order_id", "country")
# Where a byte the file's encoding could not decode shows (data_checks/landing.py decode replaces it).
TEXT_COLUMNS = (*ID_COLUMNS, "event_type")
REPLACEMENT_CHARACTER = "\ufffd"
_NULL_MARKER_KEYS = frozenset(marker.casefold() for marker in NULL_MARKERS)
# A quantity is a count, so it must be exact: a float64 holds every whole number below 2**53
# exactly. Past that (1e30, 2**63, inf) it is no count a shop sends, and Int64 would wrap 2**63
# round to a negative number, which the contract would take for a cancellation.
MAX_EXACT_QUANTITY = 2**53
# The UTC offset of an ISO 8601 timestamp ("Z", "+01:00", "-0500", " +01") comes after the time
# of day, which comes after "T" or a space; a date alone has none (in "2011-01-04", "-04" is the
# day). Matched on stripped text, it finds every offset pandas' ISO 8601 parser reads.
UTC_OFFSET = r"[T ][^+-]*(?:[+-]|Z$)"


@dataclass(frozen=True)
class ContractLimits:
    """The thresholds of the contract, from settings."""

    earliest: pd.Timestamp
    now: pd.Timestamp
    max_quantity: int
    max_unit_price: float
    non_product_item_pattern: str


# The columns a rule reads besides the ids and the time every source has: where the source sends
# none of them the rule is not applicable, and the validation report lists it so.
RULE_NEEDS: dict[str, tuple[str, ...]] = {
    "order_id_present": ("order_id",),
    "country_present": ("country",),
    "event_type_known": ("event_type",),
    "quantity_present": ("quantity",),
    "price_present": ("price",),
    "quantity_not_zero": ("quantity",),
    "price_not_negative": ("price",),
    "price_plausible": ("price",),
    "order_single_user": ("order_id",),
    "cancellation": ("quantity",),
    "write_off": ("quantity", "price"),
    "zero_price": ("quantity", "price"),
    "quantity_outlier": ("quantity",),
}
PURCHASE_ROWS = "_purchase == 1"  # a sale's quantity, price and order are required of purchases only


def row_rules(limits: ContractLimits, columns: tuple[str, ...] | None = None) -> list[RowRule]:
    """The row-level contract of interactions, in the order reasons are listed: all of it, or
    the rules that apply to a source sending ``columns``."""
    present = set(INTERACTION_COLUMNS if columns is None else columns)
    typed = "event_type" in present  # without types every row is a purchase: no condition needed
    sale = PURCHASE_ROWS if typed else None
    rules = [
        not_null("item_id_present", "item_id", "error", "no item id"),
        not_null("order_id_present", "order_id", "error", "no order id (on a purchase)", row_condition=sale),
        not_null("country_present", "country", "error", "no country"),
        not_null("event_type_known", "_event_type_known", "error",
                 f"no event type, or one outside the contract's ({', '.join(EVENT_TYPES)}): map the source's names"),
        between("text_encoding", "_undecodable", "error", "bytes that are not valid in the file's encoding (shown as U+FFFD)",
                max_value=0),
        not_null("event_time_present", "event_time", "error", "no event time, or one that does not parse"),
        not_null("quantity_present", "quantity", "error",
                 "no quantity, or not a whole number (a fraction, infinite, or 2**53 or more in magnitude)", row_condition=sale),
        not_null("price_present", "price", "error", "no price, or not a number (NaN included)", row_condition=sale),
        between("event_time_in_window", "event_time", "error", "dated in the future or before the data's epoch",
                min_value=limits.earliest, max_value=limits.now),
        not_in_set("quantity_not_zero", "quantity", "error", "a quantity of zero", [0]),
        between("price_not_negative", "price", "error", "a negative price (an accounting adjustment, not a sale)",
                min_value=0),
        between("price_plausible", "price", "error", f"a unit price above {limits.max_unit_price:,.0f} (or infinite)",
                max_value=limits.max_unit_price),
        between("order_single_user", "_order_users", "error", "an order whose lines name different users",
                max_value=1),
        not_null("anonymous_user", "user_id", "policy", "no customer id (guest checkout): cannot personalise"),
        between("cancellation", "quantity", "policy",
                "a negative quantity at a positive price: cancelled or returned" if "price" in present
                else "a negative quantity: cancelled or returned",
                min_value=0, row_condition="price > 0" if "price" in present else None),
        between("write_off", "quantity", "policy", "a negative quantity at price zero: stock written off",
                min_value=0, row_condition="price == 0"),
        not_in_set("zero_price", "price", "policy", "sold at price zero: a free item or sample",
                   [0], row_condition="quantity > 0"),
        not_matching("non_product_item", "item_id", "policy", "postage, fees, manual lines: not a product",
                     limits.non_product_item_pattern),
        between("quantity_outlier", "quantity", "policy", f"more than {limits.max_quantity:,} units on one line",
                max_value=limits.max_quantity),
        between("exact_duplicate", "_repeat", "policy", "an exact copy of an earlier row of the batch (the first is kept)",
                max_value=0),
    ]
    return [rule for rule in rules if present.issuperset(RULE_NEEDS.get(rule.name, ()))]


def not_applicable(columns: tuple[str, ...]) -> list[str]:
    """The rules a source sending ``columns`` has no column for."""
    return [name for name, needs in RULE_NEEDS.items() if not set(columns).issuperset(needs)]


def contract_columns(raw: pd.DataFrame) -> tuple[str, ...]:
    """The contract columns a batch sends."""
    return tuple(column for column in INTERACTION_COLUMNS if column in raw.columns)


def coerce(raw: pd.DataFrame) -> pd.DataFrame:
    """Typed columns of the contract, plus the helper columns some rules read (names start
    with "_"). Values that do not parse become null, and fail a *_present rule.

    How the text becomes values:
    - an id or the country is the text as written, stripped of surrounding whitespace; empty,
      or a null marker ("NULL", "N/A", ... in any case: contract.NULL_MARKERS), it is missing.
    - a quantity is a whole number below 2**53 in magnitude, in any notation: "1e3" and
      "1000.0" are 1000. A fraction, NaN, infinity or anything larger does not parse.
    - a price is any number ("inf" is, and fails price_plausible); NaN, or a number too large
      for a float64 ("1e400"), does not parse.
    - an event time is ISO 8601, read value by value: one with a UTC offset is converted to UTC,
      one without is taken to be UTC already (`naive_time_count` counts those for a note).
    Each distinct value is parsed once (see `distinct_values`).
    """
    text = {column: distinct_values(raw[column]) for column in raw.columns}

    def per_row(column: str, parse: Callable[[pd.Series], pd.Series]) -> pd.Series:
        if column not in text:  # an optional column the source does not send
            return pd.Series(pd.NA, index=raw.index, dtype=INTERACTION_COLUMNS[column])
        codes, values = text[column]
        return spread(parse(values), codes, raw.index)

    typed = pd.DataFrame(index=raw.index)
    for column in ID_COLUMNS:
        typed[column] = per_row(column, _ids)
    typed["event_time"] = per_row("event_time", lambda values: _utc_times(values)[0])
    typed["quantity"] = per_row("quantity", _counts)
    typed["price"] = per_row("price", lambda values: pd.to_numeric(values, errors="coerce").astype("float64").astype("Float64"))
    if "event_type" in raw.columns:
        typed["event_type"] = per_row("event_type", _event_types)
        typed["_event_type_known"] = typed["event_type"].where(typed["event_type"].isin(EVENT_TYPES))
    else:
        typed["event_type"] = pd.Series(DEFAULT_EVENT_TYPE, index=raw.index, dtype="string")
    typed["_purchase"] = (typed["event_type"] == "purchase").fillna(False).astype("int64")
    # The order's size as it arrived, kept with accepted rows: quarantining some lines must not
    # make the accepted baskets look smaller (drift monitors basket size). Rows without an order
    # have none.
    lines = typed.groupby("order_id", dropna=True)["order_id"].transform("size")
    typed["order_lines"] = lines.reindex(typed.index).astype("Int64")
    # Helpers: how many users an order names, how many text values of the row hold a byte the
    # file's encoding could not decode, and the nth repeat of an identical raw row.
    typed["_order_users"] = typed.groupby("order_id", dropna=True)["user_id"].transform("nunique").fillna(0).astype("int64")
    undecodable = [
        per_row(column, lambda values: values.str.contains(REPLACEMENT_CHARACTER, regex=False)).fillna(False).astype("int64")
        for column in TEXT_COLUMNS if column in raw.columns
    ]
    typed["_undecodable"] = sum(undecodable).astype("int64")
    row_codes = pd.DataFrame({column: codes for column, (codes, _) in text.items()}, index=raw.index)
    typed["_repeat"] = row_codes.groupby(list(row_codes.columns), sort=False).cumcount().astype("int64")
    return typed


def distinct_values(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """A column's distinct values and, for each row, the position of its value among them (-1
    where missing). A batch repeats its values (a customer's id, an order's time, a few dozen
    quantities): parsing each once is faster, and a value reads the same whatever rows it
    arrives with, so the partitions of a batch are typed as the whole batch is."""
    codes, uniques = pd.factorize(values)
    return codes, pd.Series(uniques, dtype=values.dtype)


def spread(per_value: pd.Series, codes: np.ndarray, index: pd.Index) -> pd.Series:
    """Results per distinct value back on the rows; a missing value's row gets a missing result."""
    return pd.Series(per_value.array.take(codes, allow_fill=True), index=index)


def _ids(values: pd.Series) -> pd.Series:
    stripped = values.str.strip().astype("string")
    return stripped.mask((stripped == "") | stripped.str.casefold().isin(_NULL_MARKER_KEYS))


def _event_types(values: pd.Series) -> pd.Series:
    """Event types compared without case, surrounding spaces, or the difference between a
    space, a hyphen and an underscore ("Add to cart" is add_to_cart); empty is missing."""
    words = values.str.strip().str.casefold().str.replace(r"[\s_-]+", "_", regex=True).astype("string")
    return words.mask(words == "")


def _counts(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    exact = (numbers == numbers.round()) & (numbers.abs() < MAX_EXACT_QUANTITY)
    return numbers.where(exact).astype("Int64")


def _utc_times(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """ISO 8601 text as UTC times, and which values carry no offset (read as UTC).

    The two kinds are parsed apart: in one call, pandas (2.3, utc=True, format="ISO8601") gives
    a value without an offset the offset of the value before it.
    """
    stripped = values.str.strip()
    offset = stripped.str.contains(UTC_OFFSET, regex=True).fillna(False).astype(bool)
    times = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    for kind in (offset, ~offset):
        if kind.any():
            times[kind] = pd.to_datetime(stripped[kind], utc=True, errors="coerce", format="ISO8601")
    return times, ~offset


def naive_time_count(raw: pd.DataFrame) -> int:
    """How many rows have an event_time that parses but carries no UTC offset: `coerce` reads
    those as UTC, and the batch's notes should say so."""
    codes, values = distinct_values(raw["event_time"])
    times, naive = _utc_times(values)
    naive_and_read = (naive & times.notna()).to_numpy()
    return int(naive_and_read[codes[codes >= 0]].sum())


@dataclass(frozen=True)
class ParseCount:
    """How many present values of a column failed to parse, and the first of them (by row)."""

    present: int
    failed: int
    example: str | None
    example_at: int | None = None  # the example's row (index label), so parts merge to the batch's first


def merge_parse_counts(parts: list[dict[str, ParseCount]]) -> dict[str, ParseCount]:
    """The parse counts of a batch from those of its parts (disjoint rows, one index)."""
    merged = {}
    for column in parts[0]:
        counts = [part[column] for part in parts]
        first = min((c for c in counts if c.example is not None), key=lambda c: c.example_at, default=None)
        merged[column] = ParseCount(
            sum(c.present for c in counts), sum(c.failed for c in counts),
            first.example if first else None, first.example_at if first else None,
        )
    return merged


@dataclass
class PartitionChecks:
    """One partition of a batch, typed and checked: everything validation needs from its rows."""

    typed: pd.DataFrame
    checks: RuleChecks
    parse_counts: dict[str, ParseCount]


def parse_counts(raw: pd.DataFrame, typed: pd.DataFrame) -> dict[str, ParseCount]:
    counts = {}
    for column in (c for c in (*NUMERIC_COLUMNS, "event_time") if c in raw.columns):
        present = raw[column].notna() & (raw[column].str.strip() != "")
        failed = present & typed[column].isna()
        failing = raw.loc[failed, column]
        counts[column] = ParseCount(
            int(present.sum()), int(failed.sum()), failing.iloc[0] if len(failing) else None, failing.index[0] if len(failing) else None,
        )
    return counts


def wrong_type_columns(counts: dict[str, ParseCount]) -> list[str]:
    """Columns where most present values fail to parse: a schema change, not bad rows."""
    problems = []
    for column, count in counts.items():
        if count.present and count.failed / count.present > WRONG_TYPE_SHARE:
            kind = {"event_time": "a timestamp", "quantity": "a whole number"}.get(column, "numeric")
            problems.append(
                f"column {column} is not {kind}: {count.failed:,} of {count.present:,} values do not parse (e.g. {count.example!r})"
            )
    return problems


def partition_by_order(raw: pd.DataFrame, partitions: int) -> list[pd.DataFrame]:
    """Split a batch into up to ``partitions`` parts, every line of an order in the same part.

    The contract's cross-row rules look only inside an order (one user per order, the order's
    size, exact repeats of a line), so checking the parts separately splits the batch exactly as
    checking it whole. Rows keep their index; parts keep the batch's row order.
    """
    if partitions <= 1 or len(raw) == 0:
        return [raw]
    part = part_of(raw, partitions)
    return [raw[part == p] for p in range(partitions) if (part == p).any()]


def part_of(raw: pd.DataFrame, partitions: int) -> np.ndarray:
    """Each row's part (0 to ``partitions`` - 1) by its order: a function of the row's order id
    alone, so every line of an order lands in one part whatever rows it arrives with (a chunk of
    a file is split as the whole file would be: data_checks/chunked.py)."""
    # A row without an order (a view, or a source without orders) goes by its user: identical
    # rows stay together, and no cross-row rule reads across users.
    users = "\x00" + raw["user_id"].fillna("").str.strip()
    keys = raw["order_id"].str.strip().fillna(users) if "order_id" in raw.columns else users
    return pd.util.hash_pandas_object(keys, index=False).to_numpy() % partitions


def check_partition(raw: pd.DataFrame, limits: ContractLimits) -> PartitionChecks:
    """The row-level work on one partition: types, the rules as masks and as a GE suite."""
    typed = coerce(raw)
    rules = row_rules(limits, contract_columns(raw))
    return PartitionChecks(typed, check_rules(typed, rules, "interactions"), parse_counts(raw, typed))


CheckPartitions = Callable[[list[pd.DataFrame], ContractLimits], list[PartitionChecks]]


def check_here(parts: list[pd.DataFrame], limits: ContractLimits) -> list[PartitionChecks]:
    """Check the partitions one after another in this process."""
    return [check_partition(part, limits) for part in parts]


# Earlier batches holding a row: for each typed row, the ledger id of an earlier batch that
# accepted the same row, or 0 (tasks/ingest.py looks them up in the fingerprints kept beside
# the accepted files of the batches in the window).
EarlierBatches = Callable[[pd.DataFrame], pd.Series]
FINGERPRINT_COLUMNS = ("user_id", "item_id", "event_time", "quantity", "price", "order_id", "country")


def row_fingerprints(typed: pd.DataFrame) -> pd.Series:
    """A 64-bit fingerprint of each row's contract values (as typed, so the same row written as
    CSV or Parquet, or with another time format, has the same one), as int64. A purchase
    fingerprints the same with or without an event_type column; another type mixes its name in,
    so a view and a purchase of the same item at the same time are two rows."""
    typed = with_contract_columns(typed)
    hashed = pd.util.hash_pandas_object(typed[list(FINGERPRINT_COLUMNS)], index=False).to_numpy()
    other = (event_types_of(typed) != DEFAULT_EVENT_TYPE).to_numpy()
    if other.any():
        kinds = pd.util.hash_pandas_object(typed.loc[other, ["event_type"]], index=False).to_numpy()
        hashed = hashed.copy()
        hashed[other] = pd.util.hash_array(hashed[other] ^ kinds)
    return pd.Series(hashed.view(np.int64), index=typed.index)


def earlier_batch_rule() -> RowRule:
    return between(
        "duplicate_of_earlier_batch", "_earlier_batch", "policy",
        "the same row was accepted from an earlier file (overlapping exports): kept once", max_value=0,
    )


def validate_interactions(
    raw: pd.DataFrame,
    max_bad_row_share: float,
    limits: ContractLimits,
    partitions: int = 1,
    check: CheckPartitions = check_here,
    earlier: EarlierBatches | None = None,
) -> ValidationResult:
    """Split a raw batch into accepted and quarantined rows, or reject it whole.

    With ``partitions`` > 1 the row checks run per partition (by order, see `partition_by_order`)
    through ``check``, which may run them anywhere (tasks/ingest.py submits them to the flow's
    task runner: a Dask cluster); the split is the same as with one partition. With ``earlier``,
    rows an earlier batch accepted already are quarantined as `duplicate_of_earlier_batch`.
    """
    reasons, ge_result = schema_problems(raw, list(REQUIRED_INTERACTION_COLUMNS), list(INTERACTION_COLUMNS), "interactions")
    if reasons:
        return rejected(raw, reasons, empty_interactions(), ge_result=ge_result)
    raw = raw.reset_index(drop=True)  # the partitions' rows go back in this order
    parts = check(partition_by_order(raw, partitions), limits)
    wrong_types = wrong_type_columns(merge_parse_counts([p.parse_counts for p in parts]))
    if wrong_types:
        return rejected(raw, wrong_types, empty_interactions())
    typed = pd.concat([p.typed for p in parts]).sort_index() if len(parts) > 1 else parts[0].typed
    checks, rules = RuleChecks.merge([p.checks for p in parts]), row_rules(limits, contract_columns(raw))
    if earlier is not None:
        # Across batches, so after the partitions (which see one batch each), on the whole batch.
        seen = pd.DataFrame({"_earlier_batch": earlier(typed).astype("int64")}, index=typed.index)
        checks, rules = checks.join(check_rules(seen, [earlier_batch_rule()], "interactions-history")), [*rules, earlier_batch_rule()]
    result = split_rows(raw, typed, checks, rules, max_bad_row_share, empty_interactions())
    result.not_applicable = not_applicable(contract_columns(raw))
    return result
