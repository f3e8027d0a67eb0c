"""Run one real flow in this process and SIGKILL it at one point of an update: what a lost
node, an OOM kill or a power cut does to a run. test_crash_windows.py forks it from its test
worker's fork server (``run_logged``); by hand:

    python -m tests.e2e.crashing_flow FLOW WINDOW [REASON]

with the settings in FRESHREC_* and the Prefect server in PREFECT_API_URL. The windows are
monkeypatched here, not hooked in production code:

- ``claimed``: right after the ledger recorded the move, before the registry was touched;
- ``champion-moved``: right after the registry moved the champion alias;
- ``training``: during an update's training, right after its first epoch's checkpoint.

Exits 3 when the flow ended without reaching the window (the test then says so).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from mlflow import MlflowClient

from models.settings import Settings
from tasks import ledger


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_claim() -> None:
    claim = ledger.claim_move

    def claim_then_die(*args, **kwargs):
        move = claim(*args, **kwargs)
        if move is not None:
            die()
        return move

    ledger.claim_move = claim_then_die


def kill_after_champion_moved(champion_alias: str) -> None:
    set_alias = MlflowClient.set_registered_model_alias

    def set_then_die(self, name, alias, version):
        set_alias(self, name, alias, version)
        if alias == champion_alias:
            die()

    MlflowClient.set_registered_model_alias = set_then_die


def kill_after_first_epoch() -> None:
    """The training task renews the batch's lease after each epoch's checkpoint: die there."""
    def die_instead(*args, **kwargs):
        die()

    ledger.renew_lease = die_instead


def main(flow_name: str, window: str, reason: str = "") -> int:
    settings = Settings()
    {
        "claimed": kill_after_claim,
        "champion-moved": lambda: kill_after_champion_moved(settings.champion_alias),
        "training": kill_after_first_epoch,
    }[window]()
    if flow_name == "bootstrap":
        from flows.bootstrap import bootstrap

        state = bootstrap(settings, return_state=True)
    elif flow_name == "continuous-training":
        from flows.continuous_training import continuous_training

        state = continuous_training(settings, return_state=True)
    elif flow_name == "rollback":
        from flows.rollback import rollback

        state = rollback(reason, settings=settings, return_state=True)
    else:
        raise SystemExit(f"unknown flow {flow_name}")
    print(f"the {flow_name} flow ended without reaching the {window} window: {state.type.value}: {state.message}")
    return 3


def run_logged(output: Path, flow_name: str, window: str, reason: str = "") -> None:
    """``main`` in a process forked for it (test_crash_windows.py), its output written to
    ``output``, against the Prefect server in PREFECT_API_URL: Prefect read its settings when the
    fork server imported it, before that variable was this run's."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with open(output, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    with temporary_settings(updates={PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        code = main(flow_name, window, reason)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
