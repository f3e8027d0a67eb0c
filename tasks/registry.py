"""Logging a trained challenger to MLflow and, on a pass, registering it as the champion."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version as installed
from pathlib import Path

import mlflow
import mlflow.data
import pandas as pd
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from data_checks.drift import DriftResult, reference_sample
from models.evaluate import METRICS
from models.files import write_parquet
from models.settings import Settings
from models.plots import training_figure
from models.pyfunc import SIGNATURE, ServingLimits
from models.recommender import Recommender
from tasks import events, ledger
from tasks.gates import PromotionVerdict, UpdateDecision
from tasks.tracking import CARD_ARTIFACT, CHECKPOINT_ARTIFACT, REFERENCE_ARTIFACT, ChampionCard, ChampionInfo, champion_version, mlflow_client, nested_run_tags, not_in_registry, tracking_store
from tasks.training import Challenger, Evaluation, TrainingData

PREVIOUS_ALIAS = "previous-champion"
RECONCILE_ROUNDS = 5  # moves applied in one reconciliation at most, while other runs keep moving the alias
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # shipped with the model as its code


def serving_requirements() -> list[str]:
    """What `mlflow models serve` needs to load the pyfunc: the versions it was trained with."""
    return [f"{name}=={installed(name).split('+')[0]}" for name in ("mlflow", "torch", "pandas", "numpy", "pyarrow")]


def serving_limits(settings: Settings) -> ServingLimits:
    """What one request may ask of the version being logged; it enforces them when served."""
    return ServingLimits(max_k=settings.max_k, max_request_rows=settings.max_request_rows)


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
    tags = nested_run_tags("training")
    with tracking_store(settings), mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run, tempfile.TemporaryDirectory() as tmp:
        reference_path = Path(tmp) / REFERENCE_ARTIFACT
        checkpoint_path = Path(tmp) / CHECKPOINT_ARTIFACT  # a fixed name: the champion's loader looks for it
        shutil.copyfile(challenger.checkpoint_path, checkpoint_path)
        # All the new rows, holdout included: a time-cut sample would skew weekday and hour.
        reference = reference_sample(pd.concat([data.new, data.holdout]), settings.reference_sample_rows, settings.seed)
        write_parquet(reference, reference_path)
        # The model before any metric: MLflow's log_model reads back the history of every metric
        # the run already has (one request per name, each a password check on a server with
        # basic auth) to link the step-0 values to the model; the run's figures below name the
        # model themselves, in one request (the curves, at their steps, stay the run's).
        model = log_served_model(checkpoint_path, reference_path, example, serving_limits(settings))
        log_training_curves(run.info.run_id, recommender)
        mlflow.log_params(
            {
                "init_from": challenger.init_from,
                "device": challenger.device,
                "train_processes": settings.train_processes,
                "epochs": challenger.epochs,
                "best_epoch": challenger.best_epoch,
                "max_steps": recommender.config.max_steps,
                "replay_half_life_days": settings.replay_half_life_days,
                "title_text": settings.use_title_text,
                "repeat_memory": settings.repeat_memory,
                "basket_decay": recommender.model.args.basket_decay,
                "memory_neighbours": recommender.model.args.neighbours,
                "neighbour_share": recommender.model.args.neighbour_share,
                "popularity_share": recommender.model.args.popularity_share,
                "memory_weight": float(recommender.model.memory_weight),
                "embedding_dim": settings.embedding_dim,
                "learning_rate": recommender.config.learning_rate,
                "batch_size": settings.batch_size,
                "replay_ratio": settings.replay_ratio,
                "eval_k": settings.eval_k,
                "target_event": settings.target_event,
                "recommend_consumed": settings.recommend_consumed,
                **{f"{name}_weight": weight for name, weight in recommender.config.event_weights.items()},
                "new_rows": len(data.new),
                "replay_rows": len(data.replay),
                "holdout_rows": len(data.holdout),
                "batches": ",".join(map(str, data.batch_ids)),
                "champion_version": champion.version if champion else "none",
                **data.data_range(),
            }
        )
        metrics = {
            # The names the champion's loader and the decay signal read (the newest slice).
            "challenger_recall": evaluation.challenger.recall,
            "challenger_ndcg": evaluation.challenger.ndcg,
            "eval_users": evaluation.challenger.users,
            "train_seconds": challenger.train_seconds,
            "final_loss": challenger.final_loss,
            **evaluation.metrics(),
        }
        if evaluation.champion is not None:
            metrics |= {"champion_recall": evaluation.champion.recall, "champion_ndcg": evaluation.champion.ndcg}
        if drift is not None:
            metrics |= {"drift_share": drift.drift_share, "unseen_item_share": drift.unseen_item_share}
            if drift.report_path:
                mlflow.log_artifact(drift.report_path, artifact_path="reports")
        mlflow.log_metrics(metrics, model_id=model.model_id)
        log_lineage(settings, data)
        card = ChampionCard(
            trained_until=str(pd.Timestamp(data.data_range()["trained_until"]).isoformat()), eval_k=settings.eval_k,
            target_event=settings.target_event, holdout={m: evaluation.challenger.value(m) for m in METRICS}, batches=list(data.batch_ids),
        )
        card_path = Path(tmp) / CARD_ARTIFACT
        card_path.write_text(card.to_json())
        mlflow.log_artifact(str(card_path))
        mlflow.set_tags(
            {
                "freshrec.decision": json.dumps(decision.reasons if decision else ["bootstrap"]),
                "freshrec.verdict": "promote" if verdict.promote else "reject",
                "freshrec.verdict_reasons": json.dumps(verdict.reasons),
            }
        )
        return run.info.run_id, model.model_uri


def log_served_model(checkpoint_path: Path, reference_path: Path, example: pd.DataFrame, limits: ServingLimits) -> ModelInfo:
    """Log the registered model's form, the pyfunc of models.pyfunc with its checkpoint, drift
    reference and serving limits, to the active MLflow run; returns its model URI and id."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODELS_DIR / "mlflow_model.py"),
        artifacts={"checkpoint": str(checkpoint_path), "reference": str(reference_path)},
        code_paths=[str(MODELS_DIR)],
        signature=SIGNATURE,
        input_example=example,
        model_config=limits.as_config(),
        pip_requirements=serving_requirements(),
    )


def log_training_curves(run_id: str, recommender: Recommender) -> None:
    """Per-epoch loss and validation score and the logged steps' loss and learning rate, as
    MLflow metrics with their step, and as one figure (training/curves.png)."""
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(record[field]), now, int(record["steps"]))
        for record in recommender.training.history
        for key, field in (("epoch_loss", "loss"), ("validation_recall", "validation"))
        if field in record
    ]
    metrics += [
        Metric(key, float(point[field]), now, int(point["step"]))
        for point in recommender.training.curve
        for key, field in (("loss", "loss"), ("learning_rate", "lr"))
    ]
    client = MlflowClient()
    for start in range(0, len(metrics), 1000):  # the REST API takes at most 1000 per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    mlflow.log_figure(training_figure(recommender.training.history, recommender.training.curve), "training/curves.png")


# Rows whose values MLflow reads one by one to infer a dataset's column types: its inference
# walks every value in Python (about a minute for the two million rows of a large update; 0.12 s
# for 10,000 rows, 0.03 s for 1,000: `lineage_dataset` on a 50,000-row frame, 2-core machine).
LINEAGE_SCHEMA_ROWS = 1_000


def lineage_dataset(frame: pd.DataFrame, source: str, name: str) -> PandasDataset:
    """An MLflow dataset of ``frame`` whose digest covers every row (a vectorised hash; MLflow's
    own reads only the first rows, after a per-value pass over all of them) and whose schema is
    inferred from the first ``LINEAGE_SCHEMA_ROWS`` rows plus, for each column with a missing
    value, the first such row, so a column is marked optional exactly when it has a gap."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes() + ",".join(map(str, frame.columns)).encode()).hexdigest()[:16]
    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
    missing = frame.isna()
    gaps = [int(missing[column].to_numpy().argmax()) for column in frame.columns if missing[column].any()]
    sample = frame.iloc[sorted(set(range(min(len(frame), LINEAGE_SCHEMA_ROWS))) | set(gaps))]
    dataset.schema = infer_signature(sample).inputs  # a cached property: computed here, once
    return dataset


def log_lineage(settings: Settings, data: TrainingData) -> None:
    """The run's training and evaluation data as MLflow dataset inputs (name, digest, source,
    and the ledger batches they came from), so a registered version leads back to its batches."""
    source = settings.accepted_dir.resolve().as_uri()
    batches = {"batches": ",".join(map(str, data.batch_ids)), **data.data_range()}
    inputs = (
        ("training", "training", pd.concat([data.new, data.replay], ignore_index=True)),
        ("holdout", "evaluation", data.holdout),
        ("historical", "evaluation", data.historical),
    )
    with warnings.catch_warnings():
        # MLflow warns that a local path "can be interpreted in multiple ways", then picks the local one.
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        warnings.filterwarnings("ignore", message=".*integer column.*")  # schema inference on quantities
        for name, context, frame in inputs:
            dataset = lineage_dataset(frame, source, f"{settings.registered_model_name}-{name}")
            mlflow.log_input(dataset, context=context, tags={"rows": str(len(frame)), **batches})


def version_tags(run_id: str, data: TrainingData, evaluation: Evaluation, verdict: PromotionVerdict, parent: str | None) -> dict[str, str]:
    """What a registry user needs to judge a version without opening its run."""
    metrics = {key: round(value, 6) for key, value in evaluation.metrics().items() if key.split(".")[0] in ("challenger", "champion")}
    return {
        "freshrec.run_id": run_id,
        "freshrec.parent_version": parent or "none",
        "freshrec.batches": ",".join(map(str, data.batch_ids)),
        "freshrec.data_range": json.dumps(data.data_range()),
        "freshrec.primary_metric": f"{evaluation.metric}@{evaluation.challenger.k}",
        "freshrec.metrics": json.dumps(metrics),
        "freshrec.verdict": "promote" if verdict.promote else "reject",
        "freshrec.verdict_reasons": json.dumps(verdict.reasons),
    }


@dataclass(frozen=True)
class Registration:
    version: str | None  # None: not promoted
    reason: str


def register(
    settings: Settings,
    run_id: str,
    model_uri: str,
    champion: ChampionInfo | None,
    tags: dict[str, str],
    batch_ids: list[int],
    flow_run_id: str | None = None,
) -> Registration:
    """Register the model and move the champion alias to it, only if the champion is still the
    version this challenger was compared with. After registering, the move is claimed in the
    ledger (a unique sequence number per alias, and the batches consumed, in one transaction)
    before the alias moves, so of two runs that compared with the same champion exactly one
    promotes; the other's version is removed again and its run says why."""
    client, _ = mlflow_client(settings)
    engine = ledger.connect(settings.ledger_url)
    name, alias = settings.registered_model_name, settings.champion_alias
    compared = champion.version if champion else None
    current = champion_version(client, settings)
    if (str(current.version) if current else None) != compared:
        moved_to = current.version if current else "none"
        return _not_promoted(client, run_id, f"@{alias} moved from version {compared or 'none'} to {moved_to} while this challenger trained")
    with tracking_store(settings):
        version = mlflow.register_model(model_uri, name, tags=tags).version
    reason = json.loads(tags["freshrec.verdict_reasons"])
    move = ledger.claim_move(
        engine, name, alias, compared, str(version), "promote", "; ".join(reason), run_id, flow_run_id, consumed_batch_ids=batch_ids
    )
    if move is None:
        client.delete_model_version(name, version)  # it never served: the registry lists champions only
        latest = ledger.latest_move(engine, name, alias)
        return _not_promoted(
            client, run_id,
            f"the last recorded move of @{alias} is to version {latest.to_version if latest else None}, not version "
            f"{compared} that this challenger was compared with (another run promoted first; see `python -m flows history`)",
        )
    # From here the promotion is the ledger's word: should this process die or the registry fail
    # below, the next run's `reconcile` finishes the move (nothing here is released or redone).
    apply_move(client, engine, settings, move)
    return Registration(str(version), f"version {version} is now @{alias}")


MODEL_DESCRIPTION = (
    "A two-tower recommender (PyTorch) kept fresh by freshrec: each version was trained by a bootstrap or a "
    "continuous-training flow run on validated batches, and registered only when it beat the champion on the same "
    "newest slice. Serving reads @{alias}; each version's description says what it was trained on, from which "
    "version and why it was promoted; its freshrec.* tags hold the details."
)


def version_description(run_id: str, tags: dict[str, str]) -> str:
    """One line for a registered version: what it was trained on, from which version, why."""
    span = json.loads(tags["freshrec.data_range"])
    dates = lambda start, end: f"{start[:10]} to {end[:10]}" if start else "none"  # noqa: E731
    parent = tags["freshrec.parent_version"]
    reasons = "; ".join(json.loads(tags["freshrec.verdict_reasons"])) or "passed the gate"
    line = (
        f"Trained on batches {tags['freshrec.batches'] or 'none'} (new rows {dates(span.get('train_from', ''), span.get('trained_until', ''))}, "
        f"held out {dates(span.get('holdout_from', ''), span.get('holdout_until', ''))}) in MLflow run {run_id}, "
        + ("from scratch" if parent == "none" else f"warm-started from version {parent}")
        + f". Promoted: {reasons}"
    )
    line = " ".join(line.split())  # one line, whatever a reason holds
    return line if len(line) <= 1000 else line[:997] + "..."


def describe_version(client: MlflowClient, settings: Settings, version: str) -> None:
    """The registered model's description (when it has none) and the version's one line, from
    the version's own tags (a version registered without them keeps its description)."""
    name = settings.registered_model_name
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION.format(alias=settings.champion_alias))
    tags = client.get_model_version(name, version).tags
    if all(key in tags for key in ("freshrec.run_id", "freshrec.data_range", "freshrec.parent_version", "freshrec.verdict_reasons", "freshrec.batches")):
        client.update_model_version(name, version, description=version_description(tags["freshrec.run_id"], tags))


def expected_aliases(engine: sa.Engine, client: MlflowClient, settings: Settings, move: ledger.AliasMove) -> dict[str, str]:
    """The champion and previous-champion aliases as the recorded ``move`` leaves them."""
    aliases = {settings.champion_alias: move.to_version}
    before = previous_champion(engine, client, settings, move.to_version)
    if before is not None and before != move.to_version:
        aliases[PREVIOUS_ALIAS] = before
    return aliases


def apply_move(client: MlflowClient, engine: sa.Engine, settings: Settings, move: ledger.AliasMove) -> None:
    """Bring the registry to a move the ledger recorded: the tags the move puts on its versions
    and runs, previous-champion, and the champion alias last. Each step sets what the move
    determines, so applying it again (the next run's `reconcile` after a crash) does no harm,
    and a champion alias that agrees with the move means every step before it was done."""
    name, alias = settings.registered_model_name, settings.champion_alias
    if move.action == "promote" and move.mlflow_run_id:
        client.set_tag(move.mlflow_run_id, "freshrec.promotion", f"promoted to version {move.to_version}")
    if move.action == "promote" and _has_version(client, name, move.to_version):
        describe_version(client, settings, move.to_version)
    rolled_back_from = move.from_version if move.action == "rollback" and move.from_version != move.to_version else None
    if rolled_back_from is not None and _has_version(client, name, rolled_back_from):  # it may be deleted since
        rolled_back = {"at": move.moved_at.isoformat(), "to": move.to_version, "reason": move.reason}
        client.set_model_version_tag(name, rolled_back_from, "freshrec.rolled_back", json.dumps(rolled_back))
    aliases = expected_aliases(engine, client, settings, move)
    if PREVIOUS_ALIAS in aliases:
        client.set_registered_model_alias(name, PREVIOUS_ALIAS, aliases[PREVIOUS_ALIAS])
    elif _has_alias(client, name, PREVIOUS_ALIAS):
        client.delete_registered_model_alias(name, PREVIOUS_ALIAS)
    client.set_registered_model_alias(name, alias, move.to_version)


class ReconcileError(RuntimeError):
    pass


@dataclass(frozen=True)
class Reconciliation:
    """What `reconcile` found and changed."""

    alias: str
    move: ledger.AliasMove | None  # the last recorded move of the alias, which the registry now agrees with
    found: dict[str, str]  # the alias and previous-champion as the registry had them (absent: not set)
    applied: bool = False  # the registry disagreed with ``move`` and was brought to it
    released: tuple[ledger.AliasMove, ...] = ()  # recorded moves to versions the registry does not have

    @property
    def repairs(self) -> list[str]:
        """What was repaired, in words; empty when registry and ledger agreed."""
        alias = self.alias
        lines = [
            f"released recorded move #{m.seq} ({m.action} of @{alias} from version {m.from_version or 'none'} to "
            f"{m.to_version}): the registry has no version {m.to_version}"
            + ("; the batches it consumed wait for the next update" if m.action == "promote" else "")
            for m in self.released
        ]
        if self.applied:
            had = ", ".join(f"@{a} = {self.found.get(a, 'none')}" for a in (alias, PREVIOUS_ALIAS))
            lines.append(
                f"the registry had {had}, behind the ledger's last move #{self.move.seq} ({self.move.action} from version "
                f"{self.move.from_version or 'none'} to {self.move.to_version}): moved it there (a run stopped between "
                "recording the move and moving the aliases, or the aliases were moved outside freshrec)"
            )
        return lines


def reconcile(settings: Settings) -> Reconciliation:
    """Bring the registry's champion and previous-champion to the ledger's last recorded move
    when they disagree: a run stopped between recording a move and moving the aliases leaves them
    apart, and so does an alias moved by hand. A recorded move to a version the registry does not
    have is released (with the batches a promotion consumed) and the move before it applies."""
    client, _ = mlflow_client(settings)
    engine = ledger.connect(settings.ledger_url)
    name, alias = settings.registered_model_name, settings.champion_alias
    released = []
    while (move := ledger.latest_move(engine, name, alias)) is not None and not _has_version(client, name, move.to_version):
        if not released and not _has_model(client, name):
            # Not a lost version but a different registry: releasing would erase the trail.
            raise ReconcileError(
                f"the ledger records moves of {name}, but the MLflow registry this run reaches has no such model: "
                "is the tracking URI (FRESHREC_MLFLOW_TRACKING_URI or MLFLOW_TRACKING_URI) right?"
            )
        ledger.release_move(engine, move.id)
        released.append(move)
    if move is None:
        return Reconciliation(alias, None, {}, released=tuple(released))
    found = _aliases(client, name, (alias, PREVIOUS_ALIAS))
    if found == expected_aliases(engine, client, settings, move):
        return Reconciliation(alias, move, found, released=tuple(released))
    # Another run may be applying this move right now: both write the same values. A run that
    # claimed a newer move after the trail was read applies it after its claim, but maybe before
    # this: so the trail is read again after each move applied here, until it stands still.
    for _ in range(RECONCILE_ROUNDS):
        apply_move(client, engine, settings, move)
        latest = ledger.latest_move(engine, name, alias)
        if latest is None or latest.id == move.id:
            break
        move = latest
    return Reconciliation(alias, move, found, applied=True, released=tuple(released))


class RollbackError(RuntimeError):
    pass


def previous_champion(engine, client: MlflowClient, settings: Settings, version: str) -> str | None:
    """The version ``version`` replaced when it was promoted (from the audit trail; for a
    champion promoted before the trail existed, the ``previous-champion`` alias)."""
    promotions = [
        m for m in ledger.moves(engine, settings.registered_model_name)
        if m.alias == settings.champion_alias and m.action == "promote" and m.to_version == version
    ]
    if promotions:
        return promotions[-1].from_version
    try:
        return str(client.get_model_version_by_alias(settings.registered_model_name, PREVIOUS_ALIAS).version)
    except MlflowException:
        return None


def rollback(settings: Settings, reason: str, to_version: str | None = None, flow_run_id: str | None = None) -> ledger.AliasMove:
    """Move the champion alias back to the version the current champion replaced (or to
    ``to_version``), record the move and why in the ledger, and tag the version rolled back from.
    ``previous-champion`` then names the version before the new champion, so a second rollback,
    for another reason, goes one step further back; the same one again changes nothing."""
    if not reason.strip():
        raise RollbackError("a rollback needs a reason: it is kept in the audit trail")
    client, _ = mlflow_client(settings)
    engine = ledger.connect(settings.ledger_url)
    name, alias = settings.registered_model_name, settings.champion_alias
    last = ledger.latest_move(engine, name, alias)
    asked_again = last is not None and last.action == "rollback" and last.reason == reason
    if asked_again and (to_version is None or str(to_version) == last.to_version):
        # The same rollback asked again (its run was killed, or its answer lost): the alias moves
        # once. To go a step further back, say why again in other words.
        apply_move(client, engine, settings, last)
        return last
    current = champion_version(client, settings)
    if current is None:
        raise RollbackError(f"{name} has no @{alias}: nothing to roll back")
    # The ledger decides who moves the alias: the move starts from the last recorded champion,
    # whatever the registry says, so a rollback also repairs an alias moved by hand outside freshrec.
    recorded = last.to_version if last else str(current.version)
    target = str(to_version) if to_version is not None else previous_champion(engine, client, settings, recorded)
    if target is None:
        raise RollbackError(f"version {recorded} replaced no earlier champion on record; name a version to roll back to")
    if target == recorded == str(current.version):
        raise RollbackError(f"version {target} is already @{alias}")
    try:
        target_version = client.get_model_version(name, target)
    except MlflowException as error:
        raise RollbackError(f"{name} has no version {target}") from error
    move = ledger.claim_move(engine, name, alias, recorded, target, "rollback", reason, target_version.run_id, flow_run_id)
    if move is None:
        raise RollbackError("the champion moved while rolling back; see `python -m flows history` and try again")
    apply_move(client, engine, settings, move)
    return move


def _has_alias(client: MlflowClient, name: str, alias: str) -> bool:
    return alias in client.get_registered_model(name).aliases


def _aliases(client: MlflowClient, name: str, aliases: tuple[str, ...]) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items() if alias in aliases}


def _has_version(client: MlflowClient, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        if not_in_registry(client, name, error):
            return False
        raise
    return True


def _has_model(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _not_promoted(client: MlflowClient, run_id: str, reason: str) -> Registration:
    client.set_tag(run_id, "freshrec.promotion", f"not promoted: {reason}")
    return Registration(None, reason)


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
    settings: Settings,
    run_id: str,
    model_uri: str,
    champion: ChampionInfo | None,
    verdict: PromotionVerdict,
    data: TrainingData,
    evaluation: Evaluation,
) -> Registration:
    tags = version_tags(run_id, data, evaluation, verdict, champion.version if champion else None)
    registration = register(settings, run_id, model_uri, champion, tags, data.batch_ids, flow_run.get_id())
    logger = get_run_logger()
    if registration.version is None:
        logger.warning("not promoted: %s", registration.reason)
    else:
        logger.info("registered %s version %s as @%s", settings.registered_model_name, registration.version, settings.champion_alias)
        announce_promotion(settings, registration.version, champion, run_id, data, evaluation)
    return registration


def announce_promotion(
    settings: Settings, version: str, champion: ChampionInfo | None, run_id: str, data: TrainingData, evaluation: Evaluation
) -> None:
    """The `freshrec.model.promoted` event; the newest batch trained on names the batch file.
    Never raises: the promotion is done whatever happens to its announcement."""
    try:
        newest = ledger.batch(ledger.connect(settings.ledger_url), max(data.batch_ids)) if data.batch_ids else None
        events.model_promoted(
            settings.registered_model_name, settings.champion_alias, version, champion.version if champion else None, run_id,
            newest.file_name if newest else None, len(data.batch_ids), evaluation.challenger.k, evaluation.challenger.recall,
            evaluation.champion.recall if evaluation.champion is not None else None,
        )
    except Exception as error:
        get_run_logger().warning("event %s was not sent: %s: %s", events.MODEL_PROMOTED, type(error).__name__, error)


# Retries: reconciling is idempotent, and it talks to both stores.
@task(name="reconcile-registry", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def reconcile_registry(settings: Settings) -> Reconciliation:
    reconciliation = reconcile(settings)
    logger = get_run_logger()
    for repair in reconciliation.repairs:
        logger.warning("repaired: %s", repair)
    if reconciliation.move is not None and not reconciliation.applied:
        logger.info("the registry agrees with the ledger: @%s is version %s", settings.champion_alias, reconciliation.move.to_version)
    return reconciliation


@task(name="roll-back-champion", cache_policy=NO_CACHE)
def roll_back_champion(settings: Settings, reason: str, to_version: str | None = None) -> ledger.AliasMove:
    move = rollback(settings, reason, to_version, flow_run.get_id())
    get_run_logger().info(
        "@%s moved back from version %s to version %s: %s", settings.champion_alias, move.from_version, move.to_version, reason
    )
    events.model_rolled_back(move.model_name, move.alias, move.from_version, move.to_version, move.reason, move.mlflow_run_id)
    return move
