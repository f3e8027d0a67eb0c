"""A validation result as a person reads it: one line per rule, with level and share."""

from __future__ import annotations

from data_checks.markup import md_text
from data_checks.rules import ValidationResult


def rule_table(result: ValidationResult) -> list[dict]:
    """Rows for a table: expectation, level, rows failed, share of the batch."""
    return [
        {
            "expectation": count.rule,
            "level": count.level,
            "rows_failed": count.rows,
            "share": round(count.rows / result.rows_in, 4) if result.rows_in else 0.0,
            "meaning": count.description,
        }
        for count in result.rule_counts
    ]


def markdown_summary(file_name: str, result: ValidationResult, notes: list[str]) -> str:
    """The summary as Markdown; the file name and reasons (which quote header names) are escaped."""
    lines = [
        f"# Validation of {md_text(file_name)}",
        "",
        f"**{md_text(result.status)}**: {result.rows_in:,} rows in, {result.rows_accepted:,} accepted, "
        f"{result.rows_quarantined:,} quarantined.",
        "",
    ]
    lines += [f"- {md_text(reason)}" for reason in result.batch_reasons + notes]
    if result.rule_counts:
        lines += ["", "| expectation | level | rows failed | share | meaning |", "|---|---|---:|---:|---|"]
        lines += [
            f"| {md_text(row['expectation'])} | {md_text(row['level'])} | {row['rows_failed']:,} | {row['share']:.2%} "
            f"| {md_text(row['meaning'])} |"
            for row in rule_table(result)
        ]
        lines += ["", "Errors count towards the share that rejects a batch; policy rows are known kinds of "
                  "rows kept out of training. Both are in the quarantine file with the rule names."]
    if result.not_applicable:
        lines += ["", "Not applicable (the source does not send the columns they read): "
                  + ", ".join(md_text(name) for name in result.not_applicable) + "."]
    return "\n".join(lines) + "\n"
