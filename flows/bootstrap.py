"""The bootstrap flow: validate what has landed and train the first champion from scratch."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.states import Completed, State

from flows.settings import Settings
from flows.validate_landing import validate_new_files
from tasks.gates import judge_challenger
from tasks.history import fold_consumed_history
from tasks.registry import log_training_run, reconcile_registry, register_champion
from tasks.report import BatchOutcome, publish_report
from tasks.tracking import load_champion
from tasks.training import assemble_training_data, evaluate_models, prune_model_files, remember_evaluated_holdout, train_challenger


class ChampionExistsError(RuntimeError):
    pass


class NotEnoughDataError(RuntimeError):
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
    reconcile_registry(settings)  # a run stopped mid-move left the registry behind the ledger
    existing = load_champion(settings)
    if existing is not None:
        raise ChampionExistsError(
            f"{settings.registered_model_name}@{settings.champion_alias} is already version {existing.version}: "
            "bootstrap trains the first champion; new data goes through the continuous-training flow"
        )
    outcomes = [BatchOutcome.of_validation(v) for v in validate_new_files(settings)]
    data = assemble_training_data(settings, None, until)
    if data.rows < settings.min_new_rows:
        raise NotEnoughDataError(
            f"only {data.rows:,} accepted rows in {settings.landing_dir}; the first champion needs at least "
            f"{settings.min_new_rows:,} (settings.min_new_rows)"
        )
    challenger = train_challenger(data, None, settings)
    evaluation = evaluate_models(challenger, None, data, settings)
    challenger = remember_evaluated_holdout(challenger, data)
    verdict = judge_challenger(evaluation.evidence(challenger.init_from), settings)
    run_id, model_uri = log_training_run(settings, "bootstrap", data, challenger, evaluation, verdict, None)
    registration = register_champion(settings, run_id, model_uri, None, verdict, data, evaluation) if verdict.promote else None
    version = registration.version if registration else None
    if version is not None:
        fold_consumed_history(settings)
    reasons = verdict.reasons + ([f"not promoted: {registration.reason}"] if registration and version is None else [])
    outcomes.append(
        BatchOutcome(
            "bootstrap (from scratch)", data.rows, data.rows, 0, "trained", update=True, reasons=reasons,
            challenger_recall=evaluation.challenger.recall, promoted=version is not None, champion_version=version,
            mlflow_run_id=run_id,
        )
    )
    prune_model_files(settings)
    summary = publish_report("Bootstrap", outcomes)
    return Completed(message=summary, data=outcomes)
