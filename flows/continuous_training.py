"""The continuous-training flow: for each new landing file, validate, measure drift, decide, and
only when it pays fine-tune, evaluate against the champion and register a better model."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from models.settings import Settings, redact
from flows.validate_landing import validate_new_files
from flows.train_and_gate import train_and_gate
from tasks.gates import decide_update
from tasks.ingest import BatchValidation, find_undecided_batches, finish_update, record_batch_failure, record_decision
from tasks.monitor import detect_batch_drift, log_decision, measure_decay, measure_signals
from tasks.registry import reconcile_registry
from tasks.report import BatchOutcome, publish_report
from tasks.tracking import load_champion, parent_run
from tasks.training import prune_model_files


class NoChampionError(RuntimeError):
    pass


@flow(name="update-on-batch", flow_run_name="batch-{validation.file_name}")
def update_on_batch(validation: BatchValidation, settings: Settings) -> BatchOutcome:
    outcome = BatchOutcome.of_validation(validation, with_reasons=False)
    champion = load_champion(settings)
    outcome.champion_version = champion.version
    drift = detect_batch_drift(validation, champion, settings)
    decay = measure_decay(validation, champion, settings)
    decision = decide_update(measure_signals(validation, champion, drift, decay, settings), settings)
    outcome.drift_share, outcome.signals, outcome.drifted_columns = drift.drift_share, decision.signals, drift.drifted_columns
    if not record_decision(settings, validation.batch_id, decision.update):
        # Another run decided on this batch while this one measured it: that run trains on it.
        outcome.reasons = ["decided by another continuous-training run working at the same time: nothing done here"]
        return outcome
    log_decision(settings, validation, drift, decay, decision)
    outcome.update, outcome.reasons = decision.update, decision.reasons
    if not decision.update:
        return outcome

    trained = train_and_gate(settings, validation.file_name, champion, through_batch_id=validation.batch_id, decision=decision, drift=drift)
    outcome.challenger_recall, outcome.champion_recall = trained.challenger_recall, trained.champion_recall
    outcome.reasons, outcome.mlflow_run_id = decision.reasons + trained.reasons, trained.mlflow_run_id
    outcome.promoted, outcome.champion_version = trained.promoted, trained.champion_version
    finish_update(settings, validation.batch_id)
    return outcome


@flow(name="continuous-training")
def continuous_training(settings: Settings | None = None) -> State:
    """Process every new landing file, oldest first, and say what was decided and why. A batch
    whose update fails is recorded as failed (tried again by later runs, then parked) and the
    run goes on; the run fails only when the pipeline cannot work (no champion, ledger or MLflow).

    Args:
        settings: freshrec settings; fields left empty come from the worker's FRESHREC_* environment.
    """
    # Resolved at run time, so a deployment reads FRESHREC_* from its worker's environment.
    settings = settings or Settings()
    # This run's MLflow runs nest under one parent, and its MLflow calls share one look-up of the experiment.
    with parent_run(settings, "continuous-training"):
        reconcile_registry(settings)  # a run stopped mid-move left the registry behind the ledger
        if load_champion(settings) is None:
            raise NoChampionError(
                f"no {settings.registered_model_name}@{settings.champion_alias} in {redact(settings.mlflow_tracking_uri)}: "
                "run the bootstrap flow first (python -m flows bootstrap)"
            )
        # Batches with nothing to decide on (catalogs, rejected files) are reported as validated.
        outcomes = [
            BatchOutcome.of_validation(v) for v in validate_new_files(settings) if v.kind == "catalog" or v.rows_accepted == 0
        ]
        # Every accepted batch without a decision, this run's and any an earlier run left or failed on.
        # One batch's failure is recorded and the run goes on; only a pipeline that cannot work stops it.
        for validation in find_undecided_batches(settings):
            state = update_on_batch(validation, settings, return_state=True)
            outcomes.append(state.result() if state.is_completed() else record_batch_failure(settings, validation, state.message or state.name))
        prune_model_files(settings)
        summary = publish_report("Continuous training", outcomes)
        return Completed(message=summary, data=outcomes)
