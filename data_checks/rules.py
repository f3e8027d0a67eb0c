"""Row rules defined once, run twice: as a Great Expectations suite (the record) and as row masks
(the split). GE lists at most a sample of failing rows; the masks cover every row, and a data
test checks that both count the same.

A rule's ``level`` says what a failure means:
- ``error``: the row is defective (a missing id, a price that does not parse). Errors count
  towards ``max_bad_row_share``: past it the producer is broken and the batch is rejected whole.
- ``policy``: the row is a known kind the contract keeps out of training (a cancellation, an
  anonymous checkout, postage). It is quarantined under that name and never counts as a defect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np
import pandas as pd

from data_checks.contract import REASON_COLUMN

if TYPE_CHECKING:
    import great_expectations as gx

Level = Literal["error", "policy"]


def _gx():
    """Great Expectations, imported at first use: it takes seconds to import, and most processes
    that import the rules (rollback, the service, the command line) never build or run a suite."""
    import great_expectations

    return great_expectations


@dataclass(frozen=True)
class RowRule:
    name: str
    level: Level
    description: str  # what a failing row is, in words a data owner uses
    expectation: gx.expectations.Expectation
    broken: Callable[[pd.DataFrame], pd.Series]


def _where(condition: str | None, frame: pd.DataFrame) -> pd.Series:
    if condition is None:
        return pd.Series(True, index=frame.index)
    return frame.eval(condition).fillna(False).astype(bool)


def not_null(name: str, column: str, level: Level, description: str, row_condition: str | None = None) -> RowRule:
    """Missing values, only among rows where ``row_condition``."""
    gx = _gx()
    conditional = {"row_condition": row_condition, "condition_parser": "pandas"} if row_condition else {}
    return RowRule(
        name, level, description,
        gx.expectations.ExpectColumnValuesToNotBeNull(column=column, meta={"rule": name}, **conditional),
        lambda df: df[column].isna() & _where(row_condition, df),
    )


def between(
    name: str,
    column: str,
    level: Level,
    description: str,
    min_value: float | pd.Timestamp | None = None,
    max_value: float | pd.Timestamp | None = None,
    row_condition: str | None = None,
) -> RowRule:
    """Values outside [min, max] (nulls pass, as in GE), only among rows where ``row_condition``."""
    gx = _gx()
    conditional = {"row_condition": row_condition, "condition_parser": "pandas"} if row_condition else {}

    def broken(df: pd.DataFrame) -> pd.Series:
        values = df[column]
        outside = pd.Series(False, index=df.index)
        if min_value is not None:
            outside |= values < min_value
        if max_value is not None:
            outside |= values > max_value
        return outside.fillna(False).astype(bool) & values.notna() & _where(row_condition, df)

    return RowRule(
        name, level, description,
        gx.expectations.ExpectColumnValuesToBeBetween(
            column=column, min_value=min_value, max_value=max_value,
            meta={"rule": name}, **conditional,
        ),
        broken,
    )


def not_in_set(name: str, column: str, level: Level, description: str, values: list, row_condition: str | None = None) -> RowRule:
    gx = _gx()
    conditional = {"row_condition": row_condition, "condition_parser": "pandas"} if row_condition else {}
    return RowRule(
        name, level, description,
        gx.expectations.ExpectColumnValuesToNotBeInSet(column=column, value_set=values, meta={"rule": name}, **conditional),
        lambda df: df[column].isin(values).fillna(False).astype(bool) & _where(row_condition, df),
    )


def not_matching(name: str, column: str, level: Level, description: str, regex: str) -> RowRule:
    gx = _gx()
    return RowRule(
        name, level, description,
        gx.expectations.ExpectColumnValuesToNotMatchRegex(column=column, regex=regex, meta={"rule": name}),
        lambda df: df[column].str.contains(regex, regex=True).fillna(False).astype(bool),
    )


@dataclass(frozen=True)
class RuleCount:
    rule: str
    level: Level
    description: str
    rows: int  # failing rows by our mask
    ge_rows: int  # failing rows as Great Expectations counted them


@dataclass
class ValidationResult:
    """What became of one batch. rows_in == rows_accepted + rows_quarantined, always."""

    status: str  # accepted | partially_accepted | rejected
    rows_in: int
    accepted: pd.DataFrame
    quarantined: pd.DataFrame  # the rows as they arrived, plus REASON_COLUMN
    batch_reasons: list[str] = field(default_factory=list)
    rule_counts: list[RuleCount] = field(default_factory=list)
    ge_result: dict | None = None  # GE's own result, as JSON
    not_applicable: list[str] = field(default_factory=list)  # rules whose columns the source does not send

    @property
    def rows_accepted(self) -> int:
        return len(self.accepted)

    @property
    def rows_quarantined(self) -> int:
        return len(self.quarantined)

    @property
    def rule_failures(self) -> dict[str, int]:
        return {c.rule: c.rows for c in self.rule_counts}

    @property
    def ge_unexpected(self) -> dict[str, int]:
        return {c.rule: c.ge_rows for c in self.rule_counts}

    @property
    def reasons(self) -> list[str]:
        return self.batch_reasons + [f"{c.rows} rows: {c.rule}" for c in self.rule_counts if c.rows]


def schema_problems(raw: pd.DataFrame, required: list[str], allowed: list[str], suite_name: str) -> tuple[list[str], dict]:
    """The batch-level expectations (columns and rows), run through Great Expectations and read
    by name. Returns the problems (empty when the batch may be validated) and GE's result."""
    gx = _gx()
    present_optional = [c for c in allowed if c in raw.columns and c not in required]
    expectations = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=[*required, *present_optional], exact_match=True, meta={"rule": "columns_match_contract"}
        ),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1, meta={"rule": "has_rows"}),
    ]
    result = _validate(raw, expectations, f"{suite_name}-batch")
    problems = []
    for item in result.results:
        rule = item.expectation_config.meta["rule"]
        if item.success:
            continue
        if rule == "columns_match_contract":
            mismatched = item.result["details"]["mismatched"]
            if mismatched.get("missing"):
                problems.append(f"missing required columns: {', '.join(sorted(mismatched['missing']))}")
            if mismatched.get("unexpected"):
                problems.append(f"unexpected columns: {', '.join(sorted(mismatched['unexpected']))}")
        elif rule == "has_rows":
            problems.append("the batch has no rows")
    return problems, result.to_json_dict()


def rejected(raw: pd.DataFrame, reasons: list[str], empty: pd.DataFrame, counts: list[RuleCount] | None = None, ge_result: dict | None = None) -> ValidationResult:
    quarantined = raw.copy()
    quarantined[REASON_COLUMN] = "batch rejected: " + "; ".join(reasons)
    return ValidationResult("rejected", len(raw), empty, quarantined, reasons, counts or [], ge_result)


@dataclass
class RuleChecks:
    """The row rules run over some rows: which rows broke which rule, and GE's own record."""

    masks: pd.DataFrame  # one boolean column per rule, in rule order, on the rows' index
    ge_counts: dict[str, int]  # failing rows per rule as Great Expectations counted them
    ge_result: dict  # GE's result as JSON

    @classmethod
    def merge(cls, parts: list["RuleChecks"]) -> "RuleChecks":
        """The checks of a batch from those of its partitions (disjoint rows of one batch)."""
        if len(parts) == 1:
            return parts[0]
        masks = pd.concat([part.masks for part in parts]).sort_index()
        counts = {rule: sum(part.ge_counts[rule] for part in parts) for rule in parts[0].ge_counts}
        result = {"success": all(part.ge_result.get("success") for part in parts), "partitions": [part.ge_result for part in parts]}
        return cls(masks, counts, result)


    def join(self, other: "RuleChecks") -> "RuleChecks":
        """These checks and ``other``'s (other rules, the same rows) as one."""
        masks = pd.concat([self.masks, other.masks.reindex(self.masks.index)], axis=1)
        result = {
            **self.ge_result,
            "success": bool(self.ge_result.get("success")) and bool(other.ge_result.get("success")),
            "results": [*self.ge_result.get("results", []), *other.ge_result.get("results", [])],
        }
        return RuleChecks(masks, {**self.ge_counts, **other.ge_counts}, result)


def check_rules(typed: pd.DataFrame, rules: list[RowRule], suite_name: str) -> RuleChecks:
    """Run the suite through Great Expectations and the rules as masks over every row."""
    masks = pd.DataFrame({rule.name: rule.broken(typed) for rule in rules}, index=typed.index)
    ge_counts, ge_result = run_suite(typed, rules, suite_name)
    return RuleChecks(masks, ge_counts, ge_result)


def apply_rules(
    raw: pd.DataFrame, typed: pd.DataFrame, rules: list[RowRule], max_bad_row_share: float, suite_name: str, empty: pd.DataFrame
) -> ValidationResult:
    """Run the suite, split the rows by the masks, reject the batch when errors pass the share."""
    return split_rows(raw, typed, check_rules(typed, rules, suite_name), rules, max_bad_row_share, empty)


def split_rows(
    raw: pd.DataFrame, typed: pd.DataFrame, checks: RuleChecks, rules: list[RowRule], max_bad_row_share: float, empty: pd.DataFrame
) -> ValidationResult:
    """Accepted and quarantined rows by the checks' masks (raw, typed and masks share an index),
    or the whole batch rejected when the rows with errors pass ``max_bad_row_share``."""
    masks = checks.masks
    counts = [RuleCount(r.name, r.level, r.description, int(masks[r.name].sum()), checks.ge_counts[r.name]) for r in rules]
    errors = masks[[r.name for r in rules if r.level == "error"]].any(axis=1)
    bad = masks.any(axis=1)
    if errors.mean() > max_bad_row_share:
        reason = f"{errors.mean():.1%} of rows have errors (more than {max_bad_row_share:.0%}): the producer looks broken"
        return rejected(raw, [reason], empty, counts, checks.ge_result)
    quarantined = raw[bad.to_numpy()].copy()
    quarantined[REASON_COLUMN] = reason_strings(masks, bad)
    columns = [c for c in typed.columns if not c.startswith("_")]  # helper columns stay behind
    return ValidationResult(
        "partially_accepted" if bad.any() else "accepted",
        len(raw),
        typed.loc[~bad, columns].reset_index(drop=True),
        quarantined.reset_index(drop=True),
        [],
        counts,
        checks.ge_result,
    )


def reason_strings(masks: pd.DataFrame, bad: pd.Series) -> np.ndarray:
    """Each bad row's rule names, ';'-separated, in rule order."""
    names = np.array(masks.columns)
    matrix = masks.to_numpy()[bad.to_numpy()]
    return np.array([";".join(names[row]) for row in matrix], dtype=object)


def _validate(frame: pd.DataFrame, expectations: list, suite_name: str):
    gx = _gx()
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch = (
        context.data_sources.add_pandas("freshrec")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("batch")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(gx.ExpectationSuite(name=suite_name, expectations=expectations), result_format="BASIC")
    for item in result.results:
        if item.exception_info and item.exception_info.get("raised_exception"):
            raise RuntimeError(f"Great Expectations failed on {item.expectation_config.meta['rule']}: {item.exception_info}")
    return result


def run_suite(typed: pd.DataFrame, rules: list[RowRule], suite_name: str) -> tuple[dict[str, int], dict]:
    """Validate with Great Expectations; return its failing-row count per rule and its result."""
    result = _validate(typed, [rule.expectation for rule in rules], suite_name)
    counts = {item.expectation_config.meta["rule"]: int(item.result.get("unexpected_count") or 0) for item in result.results}
    return counts, result.to_json_dict()
