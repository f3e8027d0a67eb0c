"""The promotion path against a real MLflow store: two challengers racing for one champion, the
audit trail, rollback and lineage (the champion served over HTTP: tests/e2e/test_serving.py).

Risks guarded: two runs both promoting (a lost update), an alias move nobody can explain or undo,
a registered version that cannot be traced to its data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import bootstrap
from flows.rollback import rollback
from flows.validate_landing import validate_landing
from tasks import ledger
from tasks.gates import judge_challenger
from tasks.registry import PREVIOUS_ALIAS, log_run, register, version_tags
from tasks.tracking import ChampionInfo, load_champion
from tasks.training import assemble_training_data, evaluate_models, remember_holdout, train_challenger, trained_on
from models.settings import Settings
from tests.conftest import CHILD_ENV, TINY_SHOP, TINY_SHOP_SETTINGS, HomeAtRest, race

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bootstrapped_home(tmp_path_factory, prefect_server) -> HomeAtRest:
    """A champion (version 1) trained on weeks 0-1, and weeks 2-3 landed and validated, built
    once for the module."""
    built = HomeAtRest(tmp_path_factory.mktemp("bootstrapped"))
    settings = Settings(home=built.home, **TINY_SHOP_SETTINGS)
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    state = bootstrap(settings, return_state=True)
    assert state.is_completed(), state.message
    write_weeks(settings.landing_dir, range(2, 4), config=TINY_SHOP)
    validate_landing(settings)
    return built.keep()


@pytest.fixture
def bootstrapped(bootstrapped_home: HomeAtRest, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, ChampionInfo]:
    """The module's bootstrapped home, put back as it was built, and its champion."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(home=bootstrapped_home.restore(), **TINY_SHOP_SETTINGS)
    return settings, load_champion.fn(settings)


def challenger_run(settings, champion, seed: int):
    """Train, evaluate and log one challenger against ``champion``, as the flow's tasks do."""
    settings = settings.model_copy(update={"seed": seed})
    data = assemble_training_data.fn(settings, champion)
    trained = train_challenger.fn(data, champion, settings)
    evaluation = evaluate_models.fn(trained, champion, data, settings)
    trained = remember_holdout.fn(trained, data)
    verdict = judge_challenger.fn(evaluation.evidence(trained.init_from), settings)
    run_id, model_uri = log_run(settings, f"challenger seed {seed}", data, trained, evaluation, verdict, champion, None, None)
    tags = version_tags(run_id, data, evaluation, verdict, champion.version if champion else None)
    return run_id, model_uri, data, tags


def _race(barrier, results, settings, run_id, model_uri, champion, tags, batch_ids):
    barrier.wait(timeout=120)  # both processes call register at the same moment
    registration = register(settings, run_id, model_uri, champion, tags, batch_ids)
    results.put((run_id, registration.version, registration.reason))


def test_a_training_run_logs_its_model_without_reading_back_its_metrics(bootstrapped, monkeypatch):
    """Each request to a tracking server with basic auth costs a password check: logging the
    model after the run's metrics made MLflow read back each metric's history, one request per
    name (58 for a run). The model is logged first and the run's figures name it themselves."""
    settings, champion = bootstrapped
    reads = []
    real = MlflowClient.get_metric_history
    monkeypatch.setattr(MlflowClient, "get_metric_history", lambda self, *a, **k: reads.append(a) or real(self, *a, **k))
    run_id, model_uri, _, _ = challenger_run(settings, champion, seed=3)
    assert reads == []

    client = MlflowClient(settings.mlflow_tracking_uri)
    run = client.get_run(run_id)
    (output,) = run.outputs.model_outputs
    assert model_uri == f"models:/{output.model_id}"
    linked = {m.key: m.value for m in client.get_logged_model(output.model_id).metrics}
    assert linked["challenger_recall"] == run.data.metrics["challenger_recall"]
    assert "eval_users" in linked and "train_seconds" in linked
    assert len(client.get_metric_history(run_id, "epoch_loss")) >= 1  # the curves stay the run's
    # Where it trained, for a person comparing runs on different machines.
    assert run.data.params["device"] == trained_on(settings.device) and run.data.params["train_processes"] == "1"


def test_two_challengers_against_one_champion_promote_once(bootstrapped):
    settings, champion = bootstrapped
    assert champion.version == "1"
    runs = [challenger_run(settings, champion, seed) for seed in (1, 2)]

    outcomes = race(_race, [(settings, run_id, uri, champion, tags, data.batch_ids) for run_id, uri, data, tags in runs])

    winners = [o for o in outcomes if o[1] is not None]
    losers = [o for o in outcomes if o[1] is None]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    (winner_run, winner_version, _), (loser_run, _, loser_reason) = winners[0], losers[0]
    assert "version 1" in loser_reason

    client = MlflowClient(settings.mlflow_tracking_uri)
    name = settings.registered_model_name
    assert str(client.get_model_version_by_alias(name, "champion").version) == winner_version == "2"
    assert str(client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == "1"
    # The registry lists champions only: the loser's version is gone, its run says why.
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == ["1", "2"]
    assert client.get_run(loser_run).data.tags["freshrec.promotion"].startswith("not promoted: ")
    assert client.get_run(winner_run).data.tags["freshrec.promotion"] == "promoted to version 2"

    # The ledger agrees: one move per promotion, and the winner consumed the batches.
    engine = ledger.connect(settings.ledger_url)
    moves = ledger.moves(engine, name)
    assert [(m.seq, m.action, m.from_version, m.to_version) for m in moves] == [(1, "promote", None, "1"), (2, "promote", "1", "2")]
    assert moves[1].mlflow_run_id == winner_run
    assert {b.file_name: b.consumed_by_version for b in ledger.all_batches(engine) if b.kind == "interactions"} == {
        "interactions-week000.csv": "1", "interactions-week001.csv": "1", "interactions-week002.csv": "2", "interactions-week003.csv": "2",
    }

    # The version can be traced to its data: tags on the version, dataset inputs on its run.
    version = client.get_model_version(name, "2")
    assert version.tags["freshrec.parent_version"] == "1"
    assert version.tags["freshrec.batches"] == ",".join(map(str, runs[0][2].batch_ids))
    assert json.loads(version.tags["freshrec.data_range"])["trained_until"]
    assert "challenger.newest.recall" in json.loads(version.tags["freshrec.metrics"])
    assert version.tags["freshrec.verdict"] in ("promote", "reject")
    inputs = client.get_run(winner_run).inputs.dataset_inputs
    contexts = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs}
    assert contexts == {f"{name}-training": "training", f"{name}-holdout": "evaluation", f"{name}-historical": "evaluation"}
    assert all(i.dataset.digest and "accepted" in i.dataset.source for i in inputs)

    # Every slice was scored for both models, with an interval on the primary metric.
    metrics = client.get_run(winner_run).data.metrics
    for slice_name in ("newest", "historical", "cold_start"):
        assert f"challenger.{slice_name}.recall" in metrics and f"champion.{slice_name}.recall" in metrics
    assert metrics["historical.rows"] > 0 and metrics["cold_start.rows"] >= 0
    assert metrics["gain.newest.recall.ci_low"] <= metrics["gain.newest.recall.ci_high"]


def test_rollback_moves_the_champion_back_and_the_trail_says_why(bootstrapped):
    settings, champion = bootstrapped
    run_id, uri, data, tags = challenger_run(settings, champion, seed=1)
    assert register(settings, run_id, uri, champion, tags, data.batch_ids).version == "2"
    client = MlflowClient(settings.mlflow_tracking_uri)
    name = settings.registered_model_name

    state = rollback("week 3 recommendations look wrong", settings=settings, return_state=True)
    assert state.is_completed(), state.message
    assert "from version 2 to version 1" in state.message
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert PREVIOUS_ALIAS not in client.get_registered_model(name).aliases  # version 1 replaced nothing
    assert json.loads(client.get_model_version(name, "2").tags["freshrec.rolled_back"])["reason"] == "week 3 recommendations look wrong"

    # Nothing earlier to go back to: a clear error, and nothing moved.
    state = rollback("again", settings=settings, return_state=True)
    assert state.is_failed() and "replaced no earlier champion" in state.message
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # A challenger compared with version 2 before the rollback does not promote over version 1.
    stale = register(settings, run_id, uri, champion.__class__(**{**champion.__dict__, "version": "2"}), tags, data.batch_ids)
    assert stale.version is None and "moved from version 2 to 1" in stale.reason

    # Forward again by name, from the command line, then the history.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"} | CHILD_ENV
    env["FRESHREC_HOME"] = str(settings.home)
    from prefect.settings import PREFECT_API_URL

    env["PREFECT_API_URL"] = PREFECT_API_URL.value()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "flows", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    forward = cli("rollback", "--to", "2", "--reason", "fixed upstream: version 2 was right")
    assert forward.returncode == 0, forward.stderr[-2000:]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == "1"
    history = cli("history")
    assert history.returncode == 0, history.stderr[-2000:]
    lines = history.stdout.splitlines()
    assert lines[0].split()[:6] == ["#", "when", "(UTC)", "alias", "action", "from"]
    assert [line.split()[4:7] for line in lines[2:]] == [
        ["promote", "-", "1"], ["promote", "1", "2"], ["rollback", "2", "1"], ["rollback", "1", "2"],
    ]
    assert "week 3 recommendations look wrong" in history.stdout
    as_json = [json.loads(line) for line in cli("history", "--json").stdout.splitlines()]
    assert [m["seq"] for m in as_json] == [1, 2, 3, 4] and all(m["moved_at"] for m in as_json)

    # An alias moved by hand outside freshrec is flagged, and a recorded move repairs it.
    client.set_registered_model_alias(name, "champion", "1")
    flagged = cli("history")
    assert flagged.returncode == 1 and "moved outside freshrec" in flagged.stderr
    assert cli("rollback", "--to", "1", "--reason", "record the manual move").returncode == 0
    assert cli("history").returncode == 0
