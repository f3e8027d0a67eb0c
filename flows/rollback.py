"""The rollback flow: move the champion back to the version it replaced, and record why."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from models.settings import Settings
from tasks.registry import reconcile_registry, roll_back_champion


@flow(name="rollback")
def rollback(reason: str, to_version: str | None = None, settings: Settings | None = None) -> State:
    """Move @champion back to the version the current champion replaced, or to ``to_version``.
    The move, its time and ``reason`` are appended to the ledger (`python -m flows history`);
    the same rollback run again (after its run was killed) moves the alias once.

    Args:
        reason: why, in words the next person on call understands (kept in the audit trail).
        to_version: the registry version to serve; empty: the one the current champion replaced.
        settings: freshrec settings; fields left empty come from the worker's FRESHREC_* environment.
    """
    settings = settings or Settings()  # resolved at run time, like the other flows
    reconcile_registry(settings)  # a run stopped mid-move left the registry behind the ledger
    move = roll_back_champion(settings, reason, to_version)
    message = (
        f"{settings.registered_model_name}@{settings.champion_alias} rolled back from version {move.from_version} "
        f"to version {move.to_version}: {reason}"
    )
    return Completed(message=message, data=move)
