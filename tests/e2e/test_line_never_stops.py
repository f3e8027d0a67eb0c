"""One bad batch never stops the line: real flows on the tests' Prefect server and MLflow store.

Risks guarded: a batch with nothing accepted crashing every later run (a crash loop), one
batch's exception failing the whole run so later batches are never decided, a failing batch
retried for ever or forgotten, a run reporting Completed while a batch silently failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from data_checks.sources import write_landing_csv
from data_checks.sources.synthetic import SyntheticShop, write_weeks
from flows.bootstrap import bootstrap
from flows.continuous_training import continuous_training
from tasks import ledger
from tasks import monitor
from tasks import ingest
from tasks.ingest import pipeline_problem
from models.settings import Settings
from tests.conftest import CHILD_ENV, TINY_SHOP, TINY_SHOP_SETTINGS, HomeAtRest
from tests.conftest import completed_run as run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def cli(settings, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"} | CHILD_ENV
    env |= {"FRESHREC_HOME": str(settings.home), "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def batch(settings, name: str) -> ledger.BatchRecord:
    return next(b for b in ledger.all_batches(ledger.connect(settings.ledger_url)) if b.file_name == name)


@pytest.fixture(scope="module")
def bootstrapped_home(tmp_path_factory, prefect_server) -> HomeAtRest:
    """A home whose bootstrap trained version 1 on weeks 0-1, built once for the module."""
    built = HomeAtRest(tmp_path_factory.mktemp("bootstrapped"))
    settings = Settings(home=built.home, **TINY_SHOP_SETTINGS)
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    run(bootstrap, settings)
    return built.keep()


@pytest.fixture
def bootstrapped(bootstrapped_home: HomeAtRest, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of the module's bootstrapped home, put back as the bootstrap left it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Settings(home=bootstrapped_home.restore(), **TINY_SHOP_SETTINGS)


def test_a_batch_of_guest_checkouts_only_does_not_stop_later_batches(bootstrapped):
    settings = bootstrapped
    guests = SyntheticShop(0, TINY_SHOP).week(2).assign(user_id=pd.NA)
    write_landing_csv(guests, settings.landing_dir / "interactions-week002-guests.csv")
    write_weeks(settings.landing_dir, range(3, 4), config=TINY_SHOP)
    outcomes, _ = run(continuous_training, settings)
    by_name = {o.batch: o for o in outcomes}
    assert by_name["interactions-week002-guests.csv"].status == "quarantined"
    assert by_name["interactions-week003.csv"].signals  # measured and decided
    assert batch(settings, "interactions-week003.csv").decision in ("skip", "trained")
    outcomes, message = run(continuous_training, settings)  # and the next run is not stuck on it
    assert outcomes == [] and "No new landing files" in message


def test_a_batch_whose_update_fails_is_recorded_retried_then_parked(bootstrapped, monkeypatch):
    settings = bootstrapped
    write_weeks(settings.landing_dir, range(2, 4), config=TINY_SHOP)
    real_drift = monitor.batch_drift

    def drift_failing_on_week2(validation, champion, settings):
        if validation.file_name == "interactions-week002.csv":
            raise ValueError("a drift report that cannot be computed")
        return real_drift(validation, champion, settings)

    monkeypatch.setattr(monitor, "batch_drift", drift_failing_on_week2)
    outcomes, message = run(continuous_training, settings)
    week2, week3 = outcomes
    assert week2.status == "update failed" and "attempt 1 of 3" in week2.reasons[0] and "cannot be computed" in week2.reasons[0]
    assert week3.signals and week3.status == "accepted"  # the run went on with the next batch
    assert "1 failed: interactions-week002.csv (update failed)" in message
    record = batch(settings, "interactions-week002.csv")
    assert record.decision == "failed" and record.update_attempts == 1 and "cannot be computed" in record.update_error

    for attempt in (2, 3):  # later runs try it again, the last time it is parked
        outcomes, message = run(continuous_training, settings)
        (again,) = outcomes
        assert again.batch == "interactions-week002.csv"
        assert again.status == ("update failed" if attempt < 3 else "update parked")
    record = batch(settings, "interactions-week002.csv")
    assert record.decision == "parked" and record.update_attempts == 3
    outcomes, _ = run(continuous_training, settings)
    assert outcomes == []  # parked: left alone until a person re-opens it

    # A person sees it in the ledger and the history, fixes the cause, and re-opens it.
    assert "parked (3x)" in cli(settings, "ledger").stdout
    assert f"{record.id} interactions-week002.csv: parked after 3 attempt(s)" in cli(settings, "history").stdout
    monkeypatch.setattr(monitor, "batch_drift", real_drift)
    assert cli(settings, "ledger", "--retry", str(record.id)).returncode == 0
    assert cli(settings, "ledger", "--retry", str(record.id)).returncode == 2  # nothing left to re-open
    (fixed,), _ = run(continuous_training, settings)
    assert fixed.batch == "interactions-week002.csv" and fixed.signals and fixed.status == "accepted"
    assert batch(settings, "interactions-week002.csv").decision in ("skip", "trained")


def test_a_pipeline_that_cannot_work_fails_the_run_and_charges_no_attempt(bootstrapped, monkeypatch):
    settings = bootstrapped
    write_weeks(settings.landing_dir, range(2, 3), config=TINY_SHOP)

    def mlflow_gone(*args, **kwargs):
        raise ConnectionError("the tracking server refused the connection")

    def drift_when_mlflow_is_gone(validation, champion, settings):
        monkeypatch.setattr(ingest, "mlflow_client", mlflow_gone)  # the outage begins mid-batch
        raise ConnectionError("the tracking server refused the connection")

    monkeypatch.setattr(monitor, "batch_drift", drift_when_mlflow_is_gone)
    state = continuous_training(settings, return_state=True)
    assert state.is_failed() and "MLflow does not answer" in state.message
    record = batch(settings, "interactions-week002.csv")
    assert record.decision == "failed" and record.update_attempts == 0  # the batch is not to blame

    broken = settings.model_copy(update={"ledger_url": f"sqlite:///{settings.home}/ledger.db/inside.db"})
    assert "the ledger does not answer" in pipeline_problem(broken)
