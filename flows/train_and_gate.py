"""The train-and-gate subflow: assemble the training data, train a challenger, evaluate it
against the champion, judge it, log it to MLflow and register it as the champion when the gate
lets it through.

The bootstrap (no champion yet) and every update of continuous training run this one sequence.
Its parameters are small (the data is assembled inside, so no data frame becomes a flow run
parameter in Prefect's database).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from prefect import flow

from data_checks.drift import DriftResult
from models.settings import Settings
from tasks.gates import UpdateDecision, judge_challenger
from tasks.history import fold_consumed_history
from tasks.registry import log_training_run, register_champion
from tasks.tracking import ChampionInfo
from tasks.training import assemble_training_data, evaluate_models, remember_holdout, train_challenger


class NotEnoughDataError(RuntimeError):
    """Too few accepted rows to train the first champion on."""


@dataclass(frozen=True)
class TrainingOutcome:
    """What one train-and-gate run did: its MLflow run, the two scores on the newest slice, and
    whether the challenger became the champion (and why, or why not)."""

    rows: int  # new rows trained on or held out
    mlflow_run_id: str
    challenger_recall: float
    champion_recall: float | None  # None: there was no champion (the bootstrap)
    promoted: bool
    champion_version: str | None  # the champion after this run: the new version, or the one before
    reasons: list[str] = field(default_factory=list)  # the gate's, then why a promotion did not happen


@flow(name="train-and-gate", flow_run_name="train-and-gate-{run_name}")
def train_and_gate(
    settings: Settings,
    run_name: str,
    champion: ChampionInfo | None,
    through_batch_id: int | None = None,
    until: datetime | None = None,
    decision: UpdateDecision | None = None,
    drift: DriftResult | None = None,
) -> TrainingOutcome:
    """Train on the accepted batches not yet trained on (warm-started from ``champion`` when the
    settings say so), gate the challenger against the champion and promote it when it passes.

    Args:
        settings: freshrec settings of the calling flow.
        run_name: the MLflow run's name: the batch file, or "bootstrap".
        champion: the production model, or None for the first one.
        through_batch_id: train on batches up to this ledger id (an update); empty: all of them.
        until: train only on batches whose events all precede this time (a bootstrap's `until`).
        decision: the update decision that started this run (logged with it).
        drift: the batch's drift result (logged with it).
    """
    data = assemble_training_data(settings, champion, until, through_batch_id=through_batch_id)
    if champion is None and data.rows < settings.min_new_rows:
        raise NotEnoughDataError(
            f"only {data.rows:,} accepted rows in {settings.landing_dir}; the first champion needs at least "
            f"{settings.min_new_rows:,} (settings.min_new_rows)"
        )
    challenger = train_challenger(data, champion, settings)
    evaluation = evaluate_models(challenger, champion, data, settings)
    challenger = remember_holdout(challenger, data)
    verdict = judge_challenger(evaluation.evidence(challenger.init_from), settings)
    run_id, model_uri = log_training_run(settings, run_name, data, challenger, evaluation, verdict, champion, decision, drift)
    reasons, version = list(verdict.reasons), None
    if verdict.promote:
        registration = register_champion(settings, run_id, model_uri, champion, verdict, data, evaluation)
        version = registration.version
        if version is None:
            reasons.append(f"not promoted: {registration.reason}")
        else:
            fold_consumed_history(settings)
    return TrainingOutcome(
        rows=data.rows,
        mlflow_run_id=run_id,
        challenger_recall=evaluation.challenger.recall,
        champion_recall=evaluation.champion.recall if champion is not None else None,
        promoted=version is not None,
        champion_version=version or (champion.version if champion is not None else None),
        reasons=reasons,
    )
