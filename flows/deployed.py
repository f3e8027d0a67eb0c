"""The flows as deployments run them: what a person with the Prefect UI or API may choose.

Each flow here is the entrypoint of one deployment in prefect.yaml. Its parameters are the only
input a deployment run takes from Prefect: `overrides` (the allow-listed thresholds and training
knobs of models.settings.RUN_OVERRIDABLE, each bounded) and the flow's own bounded choices. The
rest of the settings (paths, stores and their credentials, the Dask scheduler) are the worker's
environment, read when the run starts. Each body runs inside this run (``.fn``), so the UI shows
one flow run with its tasks, as for a run started from the command line.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow
from prefect.states import State
from pydantic import Field, StringConstraints

from flows import backtest as backtest_flow
from flows import bootstrap as bootstrap_flow
from flows import continuous_training as continuous_training_flow
from flows import rollback as rollback_flow
from models.settings import RunOverrides, Settings

# The audit trail keeps a rollback's reason: words for the next person on call, not a document.
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Version = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,8}$")]


def worker_settings(overrides: RunOverrides | None) -> Settings:
    """The worker's settings (its FRESHREC_* environment) with the run's overrides applied."""
    return Settings().with_overrides(overrides)


def inside_home(settings: Settings, path: str) -> Path:
    """``path`` (relative to the freshrec home, or absolute) resolved, refused outside the home."""
    home = settings.home.resolve()
    resolved = (home / path).resolve()
    if not resolved.is_relative_to(home):
        raise ValueError(f"{path!r} is outside the freshrec home {home}: a deployment run reads only files there")
    return resolved


@flow(name="continuous-training")
def continuous_training(overrides: RunOverrides | None = None) -> State:
    """Process every new landing file, oldest first; update and promote only when it pays.

    Args:
        overrides: thresholds and training knobs for this run; empty fields keep the worker's settings.
    """
    return continuous_training_flow.continuous_training.fn(worker_settings(overrides))


@flow(name="bootstrap")
def bootstrap(overrides: RunOverrides | None = None, until: datetime | None = None) -> State:
    """Validate every landed file and train, evaluate and register the first champion.

    Args:
        overrides: thresholds and training knobs for this run; empty fields keep the worker's settings.
        until: train only on batches whose events all precede this time; empty: every batch.
    """
    return bootstrap_flow.bootstrap.fn(worker_settings(overrides), until)


@flow(name="rollback")
def rollback(reason: Reason, to_version: Version | None = None) -> State:
    """Move @champion back to the version the current champion replaced, or to ``to_version``.

    Args:
        reason: why, in words the next person on call understands (kept in the audit trail).
        to_version: the registry version to serve; empty: the one the current champion replaced.
    """
    return rollback_flow.rollback.fn(reason, to_version, Settings())


@flow(name="backtest")
def backtest(
    source: Literal["online-retail", "synthetic", "funnel"] = "synthetic",
    period: Literal["month", "week"] = "month",
    data_path: str | None = None,
    policies: list[Literal["never", "retrain", "incremental", "triggered"]] | None = None,
    include_peers: bool = True,
    include_als: bool = True,
    synthetic_weeks: Annotated[int, Field(ge=3, le=104)] = 8,
    overrides: RunOverrides | None = None,
) -> State:
    """Replay history period by period through every update policy and the peers, and publish
    the report (<home>/backtest/<source>/report.json, an MLflow run, a Prefect artifact).

    Args:
        source: online-retail (the UCI file at data_path), synthetic (a generated shop of
            purchases) or funnel (a generated shop of views, carts and purchases).
        period: month or week: the unit each policy updates on and is scored on.
        data_path: the UCI Online Retail file, inside the worker's freshrec home (relative to it).
        policies: the update policies to replay; empty: all four.
        include_peers: also score recent popularity, repeat purchase, item-kNN, TIFU-KNN, UP-CF@r and ALS.
        include_als: ALS among the peers (needs the `implicit` package).
        synthetic_weeks: weeks of a generated shop, the first two for the bootstrap.
        overrides: thresholds and training knobs for this run; empty fields keep the worker's settings.
    """
    settings = worker_settings(overrides)
    data = str(inside_home(settings, data_path)) if data_path else None
    return backtest_flow.backtest.fn(
        source=source, period=period, data_path=data, policies=policies, include_peers=include_peers,
        include_als=include_als, synthetic_weeks=synthetic_weeks, settings=settings,
    )
