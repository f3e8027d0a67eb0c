"""The bootstrap flow: validate what has landed and train the first champion from scratch."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.states import Completed, State

from models.settings import Settings
from flows.train_and_gate import NotEnoughDataError, train_and_gate
from flows.validate_landing import validate_new_files
from tasks.registry import reconcile_registry
from tasks.report import BatchOutcome, publish_report
from tasks.tracking import load_champion, parent_run
from tasks.training import prune_model_files


class ChampionExistsError(RuntimeError):
    pass


@flow(name="bootstrap")
def bootstrap(settings: Settings | None = None, until: datetime | None = None) -> State:
    """Validate every landed file and train, evaluate and register the first champion.

    With ``until``, train only on batches whose events all precede it; later batches wait,
    validated, for the first continuous-training update.

    Args:
        settings: freshrec settings; fields left empty come from the worker's FRESHREC_* environment.
        until: train only on batches whose events all precede this time; empty: every batch.
    """
    # Resolved at run time, so a deployment reads FRESHREC_* from its worker's environment.
    settings = settings or Settings()
    # This run's MLflow runs nest under one parent, and its MLflow calls share one look-up of the experiment.
    with parent_run(settings, "bootstrap"):
        reconcile_registry(settings)  # a run stopped mid-move left the registry behind the ledger
        existing = load_champion(settings)
        if existing is not None:
            raise ChampionExistsError(
                f"{settings.registered_model_name}@{settings.champion_alias} is already version {existing.version}: "
                "bootstrap trains the first champion; new data goes through the continuous-training flow"
            )
        outcomes = [BatchOutcome.of_validation(v) for v in validate_new_files(settings)]
        trained = train_and_gate(settings, "bootstrap", None, until=until)
        outcomes.append(
            BatchOutcome(
                "bootstrap (from scratch)", trained.rows, trained.rows, 0, "trained", update=True, reasons=trained.reasons,
                challenger_recall=trained.challenger_recall, promoted=trained.promoted, champion_version=trained.champion_version,
                mlflow_run_id=trained.mlflow_run_id,
            )
        )
        prune_model_files(settings)
        summary = publish_report("Bootstrap", outcomes)
        return Completed(message=summary, data=outcomes)
