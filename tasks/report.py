"""What a run says: one outcome per batch, as a table for people and JSON for machines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from data_checks.markup import md_text, plain_table, plain_text


@dataclass
class BatchOutcome:
    batch: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    status: str
    update: bool = False
    reasons: list[str] = field(default_factory=list)
    drift_share: float | None = None
    challenger_recall: float | None = None
    champion_recall: float | None = None
    promoted: bool = False
    champion_version: str | None = None
    mlflow_run_id: str | None = None
    batch_id: int | None = None  # ledger id: the order batches landed in
    signals: list = field(default_factory=list)  # the decision's signals: name, value, threshold, fired
    drifted_columns: list[str] = field(default_factory=list)

    @classmethod
    def of_validation(cls, validation, with_reasons: bool = True) -> "BatchOutcome":
        """The outcome of a batch that has been validated and nothing more (yet)."""
        return cls(
            validation.file_name, validation.rows_in, validation.rows_accepted, validation.rows_quarantined,
            validation.status, reasons=list(validation.reasons) if with_reasons else [], batch_id=validation.batch_id,
        )

    def to_json(self) -> dict:
        return asdict(self)


# Outcomes of batches whose update failed (see tasks/ingest.py record_batch_failure), or whose
# validation raised (the file stays `received` and is validated again).
FAILED_STATUSES = ("update failed", "update parked", "received")
COLUMNS = ("batch", "in", "accepted", "quarantined", "status", "drift", "update", "challenger", "champion", "promoted", "champion v")


def _cells(o: BatchOutcome) -> list[str]:
    metric = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    return [
        o.batch, f"{o.rows_in:,}", f"{o.rows_accepted:,}", f"{o.rows_quarantined:,}", o.status,
        "-" if o.drift_share is None else f"{o.drift_share:.2f}", "yes" if o.update else "no",
        metric(o.challenger_recall), metric(o.champion_recall), "yes" if o.promoted else "no", o.champion_version or "-",
    ]


def in_landing_order(outcomes: list[BatchOutcome]) -> list[BatchOutcome]:
    """Rejected files are reported when validated, decisions later: show them as they landed."""
    return sorted(outcomes, key=lambda o: (o.batch_id is None, o.batch_id or 0))


def format_table(outcomes: list[BatchOutcome]) -> str:
    """A fixed-width table, then one line of reasons per batch."""
    outcomes = in_landing_order(outcomes)
    lines = plain_table([COLUMNS, *(_cells(o) for o in outcomes)])
    lines.append("")
    lines += [plain_text(f"{o.batch}: {'; '.join(o.reasons)}") for o in outcomes if o.reasons]
    return "\n".join(lines)


def format_markdown(title: str, outcomes: list[BatchOutcome]) -> str:
    """The outcomes as a Markdown table; every cell is escaped (file names, reasons, errors)."""
    outcomes = in_landing_order(outcomes)
    header = "| " + " | ".join(COLUMNS) + " | reasons |\n|" + "---|" * (len(COLUMNS) + 1) + "\n"
    body = "".join("| " + " | ".join(md_text(cell) for cell in [*_cells(o), "; ".join(o.reasons)]) + " |\n" for o in outcomes)
    return f"# {md_text(title)}\n\n" + (header + body if outcomes else "No new landing files.\n")


def summarize(outcomes: list[BatchOutcome]) -> str:
    """One sentence for the flow run's final state: what happened, and why nothing did."""
    if not outcomes:
        return "No new landing files: nothing to do."
    promoted = [o for o in outcomes if o.promoted]
    failed = [o for o in in_landing_order(outcomes) if o.status in FAILED_STATUSES]
    trouble = f" {len(failed)} failed: " + "; ".join(f"{o.batch} ({o.status})" for o in failed) + "." if failed else ""
    if promoted:
        return f"{len(outcomes)} batch(es); champion is now version {promoted[-1].champion_version}.{trouble}"
    last = outcomes[-1]
    return f"{len(outcomes)} batch(es); champion unchanged: {'; '.join(last.reasons) or last.status}.{trouble}"


@task(name="publish-report", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_report(title: str, outcomes: list[BatchOutcome]) -> str:
    summary = summarize(outcomes)
    create_markdown_artifact(key="freshrec-report", markdown=format_markdown(title, outcomes), description=md_text(summary))
    return summary
