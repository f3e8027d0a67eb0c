"""Logging a trained challenger to MLflow and, on a pass, registering it as the champion."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from importlib.metadata import version as installed
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.models import infer_signature
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from data_checks.drift import DriftResult, reference_sample
from flows.settings import Settings
from models.plots import training_figure
from models.pyfunc import recommend
from models.train import Recommender
from tasks import ledger
from tasks.gates import PromotionVerdict, UpdateDecision
from tasks.tracking import CHECKPOINT_ARTIFACT, REFERENCE_ARTIFACT, ChampionInfo, champion_version, mlflow_client
from tasks.training import Challenger, Evaluation, TrainingData

PREVIOUS_ALIAS = "previous-champion"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # shipped with the model as its code


def serving_requirements() -> list[str]:
    """What `mlflow models serve` needs to load the pyfunc: the versions it was trained with."""
    return [f"{name}=={installed(name).split('+')[0]}" for name in ("mlflow", "torch", "pandas", "numpy", "pyarrow")]


def log_run(
    settings: Settings,
    run_name: str,
    data: TrainingData,
    challenger: Challenger,
    evaluation: Evaluation,
    verdict: PromotionVerdict,
    champion: ChampionInfo | None,
    decision: UpdateDecision | None,
    drift: DriftResult | None,
) -> tuple[str, str]:
    """One MLflow run per training: params, data ranges, metrics, the decision, the model.
    Returns (run id, model uri)."""
    _, experiment_id = mlflow_client(settings)
    recommender = Recommender.load(challenger.checkpoint_path)
    # One known user and one the model never saw: the example shows the popularity fallback too.
    example = pd.DataFrame({"user_id": recommender.users.ids[:1] + ["new-visitor"], "k": 3})
    with warnings.catch_warnings():
        # `k` is an integer column on purpose; MLflow's hint about missing integers does not apply.
        warnings.filterwarnings("ignore", message=".*integer column.*")
        signature = infer_signature(example, recommend(recommender, example))
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run, tempfile.TemporaryDirectory() as tmp:
        reference_path = Path(tmp) / REFERENCE_ARTIFACT
        checkpoint_path = Path(tmp) / CHECKPOINT_ARTIFACT  # a fixed name: the champion's loader looks for it
        shutil.copyfile(challenger.checkpoint_path, checkpoint_path)
        # All the new rows, holdout included: a time-cut sample would skew weekday and hour.
        reference = reference_sample(pd.concat([data.new, data.holdout]), settings.reference_sample_rows, settings.seed)
        reference.to_parquet(reference_path, index=False)
        log_training_curves(run.info.run_id, recommender)
        mlflow.log_params(
            {
                "init_from": challenger.init_from,
                "epochs": challenger.epochs,
                "best_epoch": challenger.best_epoch,
                "max_steps": recommender.config.max_steps,
                "replay_half_life_days": settings.replay_half_life_days,
                "title_text": settings.use_title_text,
                "embedding_dim": settings.embedding_dim,
                "learning_rate": recommender.config.learning_rate,
                "batch_size": settings.batch_size,
                "replay_ratio": settings.replay_ratio,
                "eval_k": settings.eval_k,
                "new_rows": len(data.new),
                "replay_rows": len(data.replay),
                "holdout_rows": len(data.holdout),
                "batches": ",".join(map(str, data.batch_ids)),
                "champion_version": champion.version if champion else "none",
                **data.data_range(),
            }
        )
        metrics = {
            "challenger_recall": evaluation.challenger.recall,
            "challenger_ndcg": evaluation.challenger.ndcg,
            "eval_users": evaluation.challenger.users,
            "train_seconds": challenger.train_seconds,
            "final_loss": challenger.final_loss,
        }
        if evaluation.champion is not None:
            metrics |= {"champion_recall": evaluation.champion.recall, "champion_ndcg": evaluation.champion.ndcg}
        if drift is not None:
            metrics |= {"drift_share": drift.drift_share, "unseen_item_share": drift.unseen_item_share}
            if drift.report_path:
                mlflow.log_artifact(drift.report_path, artifact_path="reports")
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "freshrec.decision": json.dumps(decision.reasons if decision else ["bootstrap"]),
                "freshrec.verdict": "promote" if verdict.promote else "reject",
                "freshrec.verdict_reasons": json.dumps(verdict.reasons),
            }
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODELS_DIR / "mlflow_model.py"),
            artifacts={"checkpoint": str(checkpoint_path), "reference": str(reference_path)},
            code_paths=[str(MODELS_DIR)],
            signature=signature,
            input_example=example,
            pip_requirements=serving_requirements(),
        )
        return run.info.run_id, info.model_uri


def log_training_curves(run_id: str, recommender: Recommender) -> None:
    """Per-epoch loss and validation score and the logged steps' loss and learning rate, as
    MLflow metrics with their step, and as one figure (training/curves.png)."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(record[field]), now, int(record["steps"]))
        for record in recommender.history
        for key, field in (("epoch_loss", "loss"), ("validation_recall", "validation"))
        if field in record
    ]
    metrics += [
        Metric(key, float(point[field]), now, int(point["step"]))
        for point in recommender.curve
        for key, field in (("loss", "loss"), ("learning_rate", "lr"))
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):  # the REST API takes at most 1000 per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    mlflow.log_figure(training_figure(recommender.history, recommender.curve), "training/curves.png")


def register(
    settings: Settings, run_id: str, model_uri: str, champion: ChampionInfo | None, reasons: list[str], batch_ids: list[int]
) -> str | None:
    """Register the model and move the champion alias to it, unless another run moved the alias
    since this challenger was compared (then it stays registered but not champion)."""
    client, _ = mlflow_client(settings)
    name = settings.registered_model_name
    current = champion_version(client, settings)
    compared = champion.version if champion else None
    if (str(current.version) if current else None) != compared:
        return None
    version = mlflow.register_model(model_uri, name, tags={"freshrec.run_id": run_id, "freshrec.parent_version": compared or "none"})
    client.set_model_version_tag(name, version.version, "freshrec.promotion_reasons", json.dumps(reasons))
    if compared is not None:
        client.set_registered_model_alias(name, PREVIOUS_ALIAS, compared)
    client.set_registered_model_alias(name, settings.champion_alias, version.version)
    ledger.mark_consumed(ledger.connect(settings.ledger_url), batch_ids, str(version.version))
    return str(version.version)


@task(name="log-training-run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def log_training_run(
    settings: Settings,
    run_name: str,
    data: TrainingData,
    challenger: Challenger,
    evaluation: Evaluation,
    verdict: PromotionVerdict,
    champion: ChampionInfo | None,
    decision: UpdateDecision | None = None,
    drift: DriftResult | None = None,
) -> tuple[str, str]:
    run_id, model_uri = log_run(settings, run_name, data, challenger, evaluation, verdict, champion, decision, drift)
    get_run_logger().info("MLflow run %s logged (%s)", run_id, model_uri)
    return run_id, model_uri


# No retries: registering is not idempotent, and a retry would find the alias it had just moved.
@task(name="register-champion", cache_policy=NO_CACHE)
def register_champion(
    settings: Settings, run_id: str, model_uri: str, champion: ChampionInfo | None, verdict: PromotionVerdict, data: TrainingData
) -> str | None:
    version = register(settings, run_id, model_uri, champion, verdict.reasons, data.batch_ids)
    logger = get_run_logger()
    if version is None:
        logger.warning("the champion changed while this challenger trained: not promoted")
    else:
        logger.info("registered %s version %s as @%s", settings.registered_model_name, version, settings.champion_alias)
    return version
