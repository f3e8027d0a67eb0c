"""The interaction batch contract as a Great Expectations 1.x suite, plus row masks.

Every rule is defined once, as a `RowRule`, and turned both into a GE expectation (the record of
the batch, in GE's own result format) and into a boolean mask over the rows (the quarantine: it
covers every row, not only the 200 GE lists). A data test checks that the two always agree.

Batch-level failures reject the whole batch: an unreadable file, missing columns, no rows, or
more bad rows than `max_bad_row_share`. Row-level failures send just those rows to quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from data_checks.contract import INTERACTION_COLUMNS, empty_interactions, OPTIONAL_INTERACTION_COLUMNS, REASON_COLUMN


@dataclass(frozen=True)
class RowRule:
    """One row-level expectation: its name, its GE form and its mask of the rows that break it."""

    name: str
    expectation: gx.expectations.Expectation
    broken: Callable[[pd.DataFrame], pd.Series]


@dataclass
class ValidationResult:
    """What became of one batch. rows_in == rows_accepted + rows_quarantined, always."""

    status: str  # accepted | partially_accepted | rejected
    rows_in: int
    accepted: pd.DataFrame
    quarantined: pd.DataFrame  # the rows as they arrived, plus REASON_COLUMN
    batch_reasons: list[str] = field(default_factory=list)
    rule_failures: dict[str, int] = field(default_factory=dict)  # our masks, by rule
    ge_unexpected: dict[str, int] = field(default_factory=dict)  # GE's own counts, by rule
    ge_success: bool = True

    @property
    def rows_accepted(self) -> int:
        return len(self.accepted)

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantined)

    @property
    def reasons(self) -> list[str]:
        rows = [f"{n} rows: {rule}" for rule, n in self.rule_failures.items() if n]
        return self.batch_reasons + rows


def row_rules(earliest: pd.Timestamp, latest: pd.Timestamp) -> list[RowRule]:
    """The row-level contract. Values that failed to parse are null, so the not-null rules also
    catch text in a number column; range rules ignore nulls, as GE does."""

    def not_null(column: str) -> RowRule:
        return RowRule(
            f"{column}_present",
            gx.expectations.ExpectColumnValuesToNotBeNull(column=column, meta={"rule": f"{column}_present"}),
            lambda df: df[column].isna(),
        )

    return [
        not_null("user_id"),
        not_null("item_id"),
        not_null("order_id"),
        not_null("country"),
        not_null("event_time"),
        not_null("quantity"),
        not_null("price"),
        RowRule(
            "event_time_in_window",
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="event_time", min_value=earliest, max_value=latest, meta={"rule": "event_time_in_window"}
            ),
            lambda df: df["event_time"].notna() & ~df["event_time"].between(earliest, latest),
        ),
        RowRule(
            "quantity_positive",
            gx.expectations.ExpectColumnValuesToBeBetween(column="quantity", min_value=1, meta={"rule": "quantity_positive"}),
            lambda df: df["quantity"].notna() & (df["quantity"] < 1),
        ),
        RowRule(
            "price_positive",
            gx.expectations.ExpectColumnValuesToBeBetween(
                column="price", min_value=0, strict_min=True, meta={"rule": "price_positive"}
            ),
            lambda df: df["price"].notna() & (df["price"] <= 0),
        ),
    ]


def read_landing_file(path: str) -> pd.DataFrame:
    """Read a landing file as text, so nothing is lost or guessed before validation."""
    if path.endswith(".parquet"):
        return pd.read_parquet(path).astype("string")
    return pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])


def coerce(raw: pd.DataFrame) -> pd.DataFrame:
    """Typed columns of the contract; values that do not parse become null (and fail a rule)."""
    typed = pd.DataFrame(index=raw.index)
    for column in ("user_id", "item_id", "order_id", "country"):
        typed[column] = raw[column].str.strip().replace("", pd.NA).astype("string")
    typed["event_time"] = pd.to_datetime(raw["event_time"], utc=True, errors="coerce", format="ISO8601")
    quantity = pd.to_numeric(raw["quantity"], errors="coerce")
    # A fractional quantity is not a count: treat it as unparseable.
    typed["quantity"] = quantity.where(quantity.isna() | (quantity == quantity.round())).astype("Int64")
    typed["price"] = pd.to_numeric(raw["price"], errors="coerce").astype("Float64")
    if "event_type" in raw.columns:
        typed["event_type"] = raw["event_type"].astype("string")
    return typed


def validate_interactions(
    raw: pd.DataFrame, max_bad_row_share: float, earliest: pd.Timestamp, now: pd.Timestamp
) -> ValidationResult:
    """Split a raw batch into accepted and quarantined rows, or reject it whole."""
    rows_in = len(raw)
    missing = sorted(set(INTERACTION_COLUMNS) - set(raw.columns))
    unexpected = sorted(set(raw.columns) - set(INTERACTION_COLUMNS) - set(OPTIONAL_INTERACTION_COLUMNS))
    batch_reasons = []
    if missing:
        batch_reasons.append(f"missing required columns: {', '.join(missing)}")
    if unexpected:
        batch_reasons.append(f"unexpected columns: {', '.join(unexpected)}")
    if rows_in == 0:
        batch_reasons.append("the batch has no rows")
    if batch_reasons:
        return _rejected(raw, batch_reasons)

    typed = coerce(raw)
    rules = row_rules(earliest, now)
    masks = {rule.name: rule.broken(typed).fillna(False).astype(bool) for rule in rules}
    ge_success, ge_unexpected = _run_suite(typed, rules)
    bad = pd.concat(masks, axis=1).any(axis=1)
    rule_failures = {name: int(mask.sum()) for name, mask in masks.items()}

    bad_share = bad.mean()
    if bad_share > max_bad_row_share:
        reason = f"{bad_share:.1%} of rows break the contract (more than {max_bad_row_share:.0%})"
        result = _rejected(raw, [reason])
        result.rule_failures, result.ge_unexpected, result.ge_success = rule_failures, ge_unexpected, ge_success
        return result

    quarantined = raw[bad].copy()
    quarantined[REASON_COLUMN] = _reason_strings(masks, bad)
    accepted = typed[~bad].reset_index(drop=True)
    return ValidationResult(
        status="partially_accepted" if bad.any() else "accepted",
        rows_in=rows_in,
        accepted=accepted,
        quarantined=quarantined.reset_index(drop=True),
        rule_failures=rule_failures,
        ge_unexpected=ge_unexpected,
        ge_success=ge_success,
    )


def _rejected(raw: pd.DataFrame, reasons: list[str]) -> ValidationResult:
    quarantined = raw.copy()
    quarantined[REASON_COLUMN] = "batch rejected: " + "; ".join(reasons)
    return ValidationResult(
        status="rejected",
        rows_in=len(raw),
        accepted=empty_interactions(),
        quarantined=quarantined,
        batch_reasons=reasons,
        ge_success=False,
    )


def _reason_strings(masks: dict[str, pd.Series], bad: pd.Series) -> pd.Series:
    reasons = pd.Series("", index=bad.index, dtype="string")
    for name, mask in masks.items():
        reasons = reasons.mask(mask, reasons + (reasons.str.len() > 0).map({True: ";", False: ""}) + name)
    return reasons[bad]


def _run_suite(typed: pd.DataFrame, rules: list[RowRule]) -> tuple[bool, dict[str, int]]:
    """Run the suite through Great Expectations and read its result by rule name."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (
        context.data_sources.add_pandas("freshrec")
        .add_dataframe_asset("interactions")
        .add_batch_definition_whole_dataframe("batch")
        .get_batch(batch_parameters={"dataframe": typed})
    )
    suite = gx.ExpectationSuite(name="interactions", expectations=[rule.expectation for rule in rules])
    result = batch.validate(suite, result_format="BASIC")
    unexpected = {
        r.expectation_config.meta["rule"]: int(r.result.get("unexpected_count") or 0) for r in result.results
    }
    return bool(result.success), unexpected
