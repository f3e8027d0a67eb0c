"""What the command line does besides starting a flow: land files, read the ledger and the alias
history, reset the demo's home.

The command line (``flows/__main__.py``) parses arguments and prints; the reading and writing it
asks for lives here, above the tasks' stores (``tasks/ledger.py``, ``tasks/tracking.py``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.settings import Settings
from tasks import ledger

if TYPE_CHECKING:
    from tasks.report import BatchOutcome

# Each command imports what it needs when it runs: `freshrec ledger` reads a SQL table, and loads
# neither Prefect nor MLflow (`python -m flows ledger` on an empty home: 0.7 s, not 4.3 s, on a
# 2-core x86_64 machine).

DEMO_MARKER = "DEMO"
# What a demo never deletes from its home: PREFECT_HOME (run history, a UI may be reading it) and
# what `make servers` and `make deploy` keep there (their servers' stores, the deployed flows' state).
NOT_THE_DEMOS = ("prefect", "servers", "deployed")
# Files whose presence without DEMO_MARKER means the home is someone's real state.
PRECIOUS = ("ledger.db", "mlflow.db", "accepted")


@dataclass(frozen=True)
class LandingReport:
    """What became of one file given to `land`: landed (new or already there), or refused."""

    file: str
    landed: object | None = None  # tasks.land.Landed
    error: str | None = None
    event_sent: str | None = None  # the name of the event sent for it


def events_configured() -> bool:
    """Whether a Prefect API is set, so that landing a file can announce it."""
    from tasks import events

    return events.api_configured()


def land(files: list[str], landing_dir: Path) -> list[LandingReport]:
    """Copy each file into ``landing_dir`` whole, never over another file, and send a
    `freshrec.batch.landed` event for each new one when a Prefect API is configured."""
    from tasks import events
    from tasks.land import LandingRefused, land_file

    announce = events_configured()
    reports = []
    for file in files:
        try:
            landed = land_file(Path(file), landing_dir)
        except (LandingRefused, OSError) as error:
            reports.append(LandingReport(file, error=str(error)))
            continue
        sent = landed.new and announce and events.batch_landed(landed.file_name, landed.size_bytes, landed.sha256, str(landing_dir.resolve()))
        reports.append(LandingReport(file, landed=landed, event_sent=events.BATCH_LANDED if sent else None))
    return reports


def batches(settings: Settings) -> list[ledger.BatchRecord]:
    """Every landed file and what became of it, in landing order."""
    return ledger.all_batches(ledger.connect(settings.ledger_url))


def retry_batch(settings: Settings, batch_id: int) -> bool:
    """Re-open a failed or parked batch for the next run; False when it is neither."""
    return ledger.retry_batch(ledger.connect(settings.ledger_url), batch_id)


def stuck(rows: list[ledger.BatchRecord]) -> list[ledger.BatchRecord]:
    """Batches whose update failed or was parked: no version was trained on them."""
    return [r for r in rows if r.decision in ("failed", "parked")]


@dataclass(frozen=True)
class AliasHistory:
    """The champion alias's recorded moves, and whether the registry agrees with the last one."""

    moves: list[ledger.AliasMove]
    stuck: list[ledger.BatchRecord]
    registry_version: str | None  # what the registry's alias names now
    recorded_version: str | None  # where the last recorded move put it

    @property
    def disagrees(self) -> bool:
        """The registry's alias is not where the last recorded move put it: a run stopped in the
        middle of a move, or the alias was moved outside freshrec."""
        return self.recorded_version is not None and self.registry_version != self.recorded_version


def alias_history(settings: Settings) -> AliasHistory:
    engine = ledger.connect(settings.ledger_url)
    moves = ledger.moves(engine, settings.registered_model_name)
    if not moves:
        return AliasHistory([], [], None, None)
    from tasks.tracking import champion_version, mlflow_client

    client, _ = mlflow_client(settings)
    current = champion_version(client, settings)
    recorded = ledger.latest_move(engine, settings.registered_model_name, settings.champion_alias)
    return AliasHistory(
        moves, stuck(ledger.all_batches(engine)),
        None if current is None else str(current.version), None if recorded is None else recorded.to_version,
    )


class HomeInUse(RuntimeError):
    """The demo was pointed at a home that holds state it did not create."""


def reset_demo_home(home: Path) -> bool:
    """Empty ``home`` for a new demo (keeping NOT_THE_DEMOS) and mark it as the demo's; True when
    there was a demo state to reset. Refuses, with HomeInUse, a home the demo did not create."""
    reset = False
    if home.exists():
        precious = [p.name for p in home.iterdir() if p.name in PRECIOUS]
        if precious and not (home / DEMO_MARKER).exists():
            raise HomeInUse(
                f"{home} holds state that the demo did not create; set FRESHREC_HOME to another "
                "directory for the demo, or move it away"
            )
        for entry in home.iterdir():
            if entry.name in NOT_THE_DEMOS:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        reset = True
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("created by `freshrec demo`; the next demo deletes this directory\n")
    return reset


def outcome_table(outcomes: list[BatchOutcome]) -> str:
    """A run's outcomes as the fixed-width table people read."""
    from tasks.report import format_table

    return format_table(outcomes)


def outcome_json(outcomes: list[BatchOutcome]) -> list[dict]:
    """A run's outcomes, one JSON-ready object per batch in landing order."""
    from tasks.report import in_landing_order

    return [o.to_json() for o in in_landing_order(outcomes)]
