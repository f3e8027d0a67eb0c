"""MLflow at the edge: the client, the champion's artifacts, and the pyfunc packaging."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from data_checks.landing import output_stem
from models.files import temporary_beside
from models.settings import Settings, secret_block
from tasks.logs import run_logger

CHECKPOINT_ARTIFACT = "recommender.pt"
REFERENCE_ARTIFACT = "reference.parquet"
CARD_ARTIFACT = "champion_card.json"  # a training run's ChampionCard, at the root of its artifacts


@dataclass(frozen=True)
class ChampionCard:
    """What a later run needs to know of a trained version, written with its training run: the
    watermark of the data it was trained on and its scores on its own held-out slice (what decay
    is measured against)."""

    trained_until: str  # ISO 8601: the newest event the version was trained on
    eval_k: int
    target_event: str
    holdout: dict[str, float]  # metric -> score on the newest held-out slice (recall, ndcg, hit_rate, mrr)
    batches: list[int] = field(default_factory=list)  # the ledger batches it was trained on

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ChampionCard":
        """A card read back; a malformed one raises ValueError naming what is wrong."""
        try:
            raw = json.loads(text)
            card = cls(
                trained_until=str(pd.Timestamp(raw["trained_until"]).isoformat()), eval_k=int(raw["eval_k"]),
                target_event=str(raw["target_event"]), holdout={str(k): float(v) for k, v in dict(raw["holdout"]).items()},
                batches=[int(b) for b in raw.get("batches", [])],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a champion card: {type(error).__name__}: {error}") from None
        if "recall" not in card.holdout:
            raise ValueError("not a champion card: no holdout recall")
        return card


@dataclass(frozen=True)
class ChampionInfo:
    """The production model as the registry knows it, with its files downloaded locally."""

    version: str
    run_id: str
    checkpoint_path: Path
    reference_path: Path
    trained_until: pd.Timestamp  # newest event the champion was trained on (its watermark)
    holdout_scores: dict[str, float]  # every metric on its own held-out slice (its card)

    def holdout_score(self, metric: str) -> float:
        """The champion's ``metric`` on its own held-out slice, what decay compares a batch with."""
        return self.holdout_scores[metric]


def export_tracking_password(settings: Settings) -> None:
    """The tracking server's password from its Secret block, in MLFLOW_TRACKING_PASSWORD (where
    MLflow's client reads it) when the environment does not give one."""
    if settings.mlflow_tracking_password_secret_block and not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        os.environ["MLFLOW_TRACKING_PASSWORD"] = secret_block(settings.mlflow_tracking_password_secret_block)


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def tracking_store(settings: Settings) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.start_run``, ``log_model``, ``register_model``, artifact
    downloads) pointed at the settings' store for the block only. MLflow keeps its URIs in
    process globals and exports them to the environment, where ``Settings`` would read them: the
    process's previous URIs and variables come back when the block ends, so one store never
    becomes the default of later code (another home, a test, a library user's own MLflow)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    export_tracking_password(settings)
    before = tracking_utils._tracking_uri, registry_utils._registry_uri, {name: os.environ.get(name) for name in _URI_VARIABLES}
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    try:
        yield
    finally:
        tracking, registry, variables = before
        mlflow.set_tracking_uri(tracking)
        registry_utils._registry_uri = registry
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class ParentRun:
    """The MLflow run that stands for one flow run; its validate, decide and train runs are
    nested under it. Created with the first of them, so a run with nothing to do leaves none."""

    settings: Settings
    flow_name: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # The experiments' ids the flow run has looked up, by (tracking URI, experiment name).
    experiment_ids: dict[tuple[str, str], str] = field(default_factory=dict)


_PARENT: ContextVar[ParentRun | None] = ContextVar("freshrec_mlflow_parent_run", default=None)


def prefect_run_tags() -> dict[str, str]:
    """The Prefect flow run the caller runs in (id, name, flow and UI link) as MLflow tags;
    empty outside a flow run."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return {}
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name), "prefect.flow_name": str(flow_run.flow_name)}
    url = flow_run.ui_url
    if url:
        tags["prefect.flow_run_url"] = str(url)
    return tags


@contextmanager
def parent_run(settings: Settings, flow_name: str) -> Iterator[ParentRun]:
    """Nest the MLflow runs the enclosed code starts (nested_run_tags) under one parent run
    named for the flow run, tagged with it, and ended with the block (FAILED when it raised)."""
    outer = _PARENT.get()
    if outer is not None:  # a subflow's runs nest under the flow run that called it
        yield outer
        return
    parent = ParentRun(settings, flow_name, tags=prefect_run_tags())
    token = _PARENT.set(parent)
    status = "FAILED"
    try:
        yield parent
        status = "FINISHED"
    finally:
        _PARENT.reset(token)
        if parent.run_id is not None:
            try:
                registry_client(settings).set_terminated(parent.run_id, status)
            except MlflowException:  # the run's outcome stands; the parent stays RUNNING in the UI
                pass


def nested_run_tags(stage: str) -> dict[str, str]:
    """Tags for a new MLflow run of ``stage``: the Prefect flow run it belongs to and, inside a
    parent_run block, the parent (created here, with the first nested run)."""
    tags = {"freshrec.stage": stage, **prefect_run_tags()}
    parent = _PARENT.get()
    if parent is None:
        return tags
    if parent.run_id is None:
        client, experiment_id = mlflow_client(parent.settings)
        name = parent.tags.get("prefect.flow_run_name")
        run = client.create_run(
            experiment_id, run_name=f"{parent.flow_name} {name}" if name else parent.flow_name,
            tags={"freshrec.stage": "flow", **parent.tags},
        )
        parent.run_id = run.info.run_id
    return {**tags, MLFLOW_PARENT_RUN_ID: parent.run_id}


def registry_client(settings: Settings) -> MlflowClient:
    """A client of the settings' store and registry; nothing process-wide is changed."""
    export_tracking_password(settings)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def mlflow_client(settings: Settings, experiment_name: str | None = None) -> tuple[MlflowClient, str]:
    """A client of the settings' store (nothing process-wide is changed) and the id of the
    experiment ``experiment_name`` (default: the settings'), created on first use."""
    client = registry_client(settings)
    name = experiment_name or settings.experiment_name
    # Inside a flow run the id is looked up once (a run asks a dozen times, each a request and,
    # on a server with basic auth, a password check); outside one, every time.
    parent = _PARENT.get()
    known = parent.experiment_ids if parent is not None else {}
    key = (settings.mlflow_tracking_uri, name)
    if key not in known:
        known[key] = _experiment_id(client, name, settings)
    return client, known[key]


def _experiment_id(client: MlflowClient, name: str, settings: Settings) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(settings))
    except MlflowException:  # created meanwhile by a concurrent run
        return client.get_experiment_by_name(name).experiment_id


def artifact_location(settings: Settings) -> str | None:
    """Where a new experiment keeps its artifacts: under the home for a database store without a
    server (SQLite, PostgreSQL), not in ./mlruns of whatever directory ran it; None (the server's
    choice) for a tracking server."""
    if settings.mlflow_tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    return settings.mlflow_artifacts_dir.resolve().as_uri()


def not_in_registry(client: MlflowClient, name: str, error: MlflowException) -> bool:
    """Whether ``error``, from asking the registry about model ``name``, means it has no such
    model or version. MLflow's basic-auth app answers 403, not 404, about a model that does not
    exist yet (there is nothing to hold a permission on), so a 403 is asked about once more."""
    if error.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    if error.error_code != "PERMISSION_DENIED":
        return False
    try:
        client.get_registered_model(name)
    except MlflowException as missing:
        return missing.error_code == "RESOURCE_DOES_NOT_EXIST"
    return False  # the model is there: the 403 is a real refusal


def champion_version(client: MlflowClient, settings: Settings):
    """The model version behind the champion alias, or None before the first bootstrap."""
    try:
        return client.get_model_version_by_alias(settings.registered_model_name, settings.champion_alias)
    except MlflowException as error:
        if error.error_code == "INVALID_PARAMETER_VALUE" or not_in_registry(client, settings.registered_model_name, error):
            return None
        raise


def aliased_versions(settings: Settings) -> dict[str, str]:
    """alias -> version for every alias of the registered model; empty before its first version."""
    client, _ = mlflow_client(settings)
    try:
        aliases = client.get_registered_model(settings.registered_model_name).aliases
    except MlflowException as error:
        if not_in_registry(client, settings.registered_model_name, error):
            return {}
        raise
    return {alias: str(version) for alias, version in aliases.items()}


def champion_cache_dir(settings: Settings, version: str) -> Path:
    """Where load_champion keeps a registered version's files: an entry of the champion cache."""
    return settings.home / "cache" / f"{settings.registered_model_name}-v{version}"


def cached_checkpoint_path(settings: Settings, version: str) -> Path:
    """The checkpoint of ``version`` in the champion cache: what its ChampionInfo points to."""
    return champion_cache_dir(settings, version) / "model" / "artifacts" / CHECKPOINT_ARTIFACT


def _fetch_champion(settings: Settings) -> ChampionInfo | None:
    """Download the champion's checkpoint and drift reference (cached by version; an entry
    pruned since, or never fetched, is downloaded again from the registry)."""
    client, _ = mlflow_client(settings)
    version = champion_version(client, settings)
    if version is None:
        return None
    cache_dir = champion_cache_dir(settings, str(version.version))
    model_dir = cache_dir / "model"
    if not model_dir.exists():
        # Download beside the cache and rename, so a crash never leaves a half-filled cache entry.
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache_dir))
        uri = f"models:/{settings.registered_model_name}/{version.version}"
        with tracking_store(settings):
            downloaded = mlflow.artifacts.download_artifacts(uri, dst_path=str(staging))
        Path(downloaded).replace(model_dir)
        shutil.rmtree(staging, ignore_errors=True)
    card = champion_card(client, version.run_id, cache_dir)
    return ChampionInfo(
        version=str(version.version),
        run_id=version.run_id,
        checkpoint_path=cached_checkpoint_path(settings, str(version.version)),
        reference_path=model_dir / "artifacts" / REFERENCE_ARTIFACT,
        trained_until=pd.Timestamp(card.trained_until),
        holdout_scores=dict(card.holdout),
    )


def champion_card(client: MlflowClient, run_id: str, cache_dir: Path) -> ChampionCard:
    """The card of the training run ``run_id`` (kept in ``cache_dir``). A version trained before
    cards were written has none: its card is made from the run's `trained_until` parameter and
    `challenger_*` metrics, once, and kept the same way."""
    kept = cache_dir / CARD_ARTIFACT
    if kept.exists():
        return ChampionCard.from_json(kept.read_text())
    try:
        with tempfile.TemporaryDirectory(dir=cache_dir) as staging:
            card = ChampionCard.from_json(Path(client.download_artifacts(run_id, CARD_ARTIFACT, staging)).read_text())
    except MlflowException:  # no card in that run
        run = client.get_run(run_id)
        metrics = run.data.metrics
        card = ChampionCard(
            trained_until=str(pd.Timestamp(run.data.params["trained_until"]).isoformat()),
            eval_k=int(run.data.params.get("eval_k", 20)), target_event=run.data.params.get("target_event", "purchase"),
            holdout={m: float(metrics[f"challenger.newest.{m}"]) for m in ("ndcg", "hit_rate", "mrr") if f"challenger.newest.{m}" in metrics}
            | {"recall": float(metrics["challenger_recall"])},
        )
    temporary = temporary_beside(kept)
    temporary.write_text(card.to_json())
    temporary.replace(kept)
    return card


@task(name="load-champion", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_champion(settings: Settings) -> ChampionInfo | None:
    """The champion with its checkpoint and drift reference downloaded (cached by version), or
    None before the first bootstrap."""
    champion = _fetch_champion(settings)
    logger = run_logger(__name__)
    if champion is None:
        logger.info("no %s@%s registered yet", settings.registered_model_name, settings.champion_alias)
    else:
        logger.info("champion: %s version %s, trained until %s", settings.registered_model_name, champion.version, champion.trained_until)
    return champion


def log_validation_run(
    settings: Settings, batch_id: int, file_name: str, status: str, counts: dict[str, int], rule_rows: dict[str, int], report_dir: Path
) -> str:
    """One small MLflow run per validated batch: its counts, per-rule failures and reports."""
    _, experiment_id = mlflow_client(settings)
    stem = output_stem(batch_id, file_name)
    tags = {**nested_run_tags("validation"), "freshrec.batch": file_name, "freshrec.status": status}
    with tracking_store(settings), mlflow.start_run(experiment_id=experiment_id, run_name=f"validate {file_name}", tags=tags) as run:
        mlflow.log_metrics({**counts, **{f"failed.{rule}": rows for rule, rows in rule_rows.items()}})
        # Named, never globbed: a landing file's name may hold glob characters ([, ], *, ?).
        for report in (report_dir / f"{stem}.validation.json", report_dir / f"{stem}.validation.md"):
            if report.exists():
                mlflow.log_artifact(str(report), artifact_path="validation")
        return run.info.run_id
