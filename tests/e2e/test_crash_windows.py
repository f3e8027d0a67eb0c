"""A run killed in the middle of an alias move, and the run after it.

A real flow runs in a child process (tests/e2e/crashing_flow.py) against this session's Prefect
server and the test's stores, and is SIGKILLed right after the ledger recorded a move (before the
registry was touched) or right after the registry moved the champion alias. The next run, in
this process, must complete, promote at most once per challenger, and leave the ledger, the
registry and the accepted data consistent.

Risks guarded: a ledger ahead of the registry that blocks every later promotion ("another run
promoted first" until someone rolls back by hand); batches a promoted champion was trained on
that the next run trains on (and scores on) again; a rollback that, run again after a crash,
goes back two steps instead of one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import ChampionExistsError, bootstrap
from flows.continuous_training import continuous_training
from flows.rollback import rollback
from models.settings import Settings
from models import train as train_module
from models.recommender import Recommender
from tasks import ledger
from tasks.registry import PREVIOUS_ALIAS
from tests.conftest import CHILD_ENV, TINY_SHOP, TINY_SHOP_SETTINGS, HomeAtRest, fork_context, in_environment
from tests.e2e import crashing_flow

pytestmark = pytest.mark.slow
# This test is about what a crash leaves, not the gate (tested in tests/code): a challenger that
# reaches the value threshold always promotes, so every update moves the alias.
OVERRIDES = dict(TINY_SHOP_SETTINGS, min_improvement=-1.0, min_relative_improvement=-1.0, max_forgetting=1.0)
WINDOWS = ("claimed", "champion-moved")
REASON = "week 3 recommendations look wrong"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Settings(home=tmp_path / "freshrec", **OVERRIDES)


@pytest.fixture(scope="module")
def bootstrapped_home(tmp_path_factory, prefect_server) -> HomeAtRest:
    """A home where the bootstrap trained version 1 on weeks 0-1 and weeks 2-3 wait in landing/,
    built once for the module."""
    built = HomeAtRest(tmp_path_factory.mktemp("bootstrapped"))
    settings = Settings(home=built.home, **OVERRIDES)
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    completed(bootstrap, settings)
    write_weeks(settings.landing_dir, range(2, 4), config=TINY_SHOP)
    return built.keep()


@pytest.fixture
def bootstrapped(bootstrapped_home: HomeAtRest, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of the module's bootstrapped home, put back as the bootstrap left it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Settings(home=bootstrapped_home.restore(), **OVERRIDES)


def killed(settings: Settings, flow_name: str, window: str, reason: str = "", **overrides) -> None:
    """Run ``flow_name`` in a child process that SIGKILLs itself at ``window`` (forked from the
    worker's fork server: tests/conftest.py, ``fork_context``)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"} | CHILD_ENV
    env |= {f"FRESHREC_{key.upper()}": str(value) for key, value in {**OVERRIDES, **overrides}.items()}
    env |= {"FRESHREC_HOME": str(settings.home), "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's server
    output = settings.home.parent / f"killed-{flow_name}-{window}.log"
    child = fork_context().Process(target=in_environment, args=(env, crashing_flow.run_logged, output, flow_name, window, reason))
    child.start()
    child.join(timeout=600)
    hung = child.exitcode is None
    if hung:  # killed here, it would exit as the window's own SIGKILL does
        child.kill()
        child.join()
    said = output.read_text()[-6000:] if output.exists() else ""
    assert not hung, f"the {flow_name} run was still going after 600 s:\n{said}"
    assert child.exitcode == -signal.SIGKILL, f"exit {child.exitcode}:\n{said}"


def completed(flow, *args, **kwargs):
    state = flow(*args, return_state=True, **kwargs)
    assert state.is_completed(), state.message
    return state


def promoted_next(settings: Settings) -> None:
    """Two more weeks, one continuous-training run: it must promote (the gate lets any challenger through)."""
    write_weeks(settings.landing_dir, range(4, 6), config=TINY_SHOP)
    outcomes = completed(continuous_training, settings).result()
    assert any(o.promoted for o in outcomes), [o.reasons for o in outcomes]
    assert not any("not promoted" in reason for o in outcomes for reason in o.reasons), [o.reasons for o in outcomes]


def assert_consistent(settings: Settings) -> list[ledger.AliasMove]:
    """The trail is one chain ending where the registry serves; each batch was consumed by the
    version promoted with it; no row a champion trained on was new again to its successor."""
    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    engine = ledger.connect(settings.ledger_url)
    name, alias = settings.registered_model_name, settings.champion_alias
    moves = [m for m in ledger.moves(engine, name) if m.alias == alias]
    assert [m.seq for m in moves] == list(range(1, len(moves) + 1))
    assert [m.from_version for m in moves] == [None] + [m.to_version for m in moves[:-1]], moves

    promotions = [m for m in moves if m.action == "promote"]
    replaced = {m.to_version: m.from_version for m in promotions}
    expected = {alias: moves[-1].to_version}
    if replaced.get(moves[-1].to_version) is not None:
        expected[PREVIOUS_ALIAS] = replaced[moves[-1].to_version]
    assert {a: str(v) for a, v in client.get_registered_model(name).aliases.items()} == expected, moves
    # One version per promotion, each from its own run; the registry lists champions only.
    assert len(replaced) == len({m.mlflow_run_id for m in promotions}) == len(promotions)
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'")) == sorted(replaced)

    batches = [b for b in ledger.all_batches(engine) if b.kind == "interactions" and b.rows_accepted > 0]
    assert {b.consumed_by_version for b in batches} <= set(replaced) | {None}
    for move in promotions:
        version = client.get_model_version(name, move.to_version)
        run = client.get_run(move.mlflow_run_id)
        consumed = ",".join(str(b.id) for b in batches if b.consumed_by_version == move.to_version)
        assert version.run_id == move.mlflow_run_id
        assert version.tags["freshrec.batches"] == run.data.params["batches"] == consumed, move
        assert run.data.tags.get("freshrec.promotion") == f"promoted to version {move.to_version}"
        assert run.data.params["champion_version"] == (move.from_version or "none")
        if move.from_version is not None:  # nothing the champion trained on is new to its challenger
            before = client.get_run(client.get_model_version(name, move.from_version).run_id)
            assert pd.Timestamp(run.data.params["train_from"]) > pd.Timestamp(before.data.params["trained_until"]), move
    consumed_ids = [b.id for b in batches if b.consumed_by_version is not None]
    assert all(b.id > max(consumed_ids) for b in batches if b.consumed_by_version is None)
    for move in moves:
        if move.action == "rollback":
            assert json.loads(client.get_model_version(name, move.from_version).tags["freshrec.rolled_back"])["to"] == move.to_version
    return moves


def repaired(caplog: pytest.LogCaptureFixture, registry_had: str) -> bool:
    return any(f"repaired: the registry had {registry_had}, behind the ledger's last move" in r.getMessage() for r in caplog.records)


def test_bootstrap_killed_after_its_claim(settings, prefect_server, caplog):
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    killed(settings, "bootstrap", "claimed")

    # The killed bootstrap recorded version 1 as the first champion: a second one is refused,
    # and continuous training carries on from version 1.
    with pytest.raises(ChampionExistsError, match="already version 1"):
        bootstrap(settings)
    assert repaired(caplog, "@champion = none, @previous-champion = none")
    write_weeks(settings.landing_dir, range(2, 4), config=TINY_SHOP)
    outcomes = completed(continuous_training, settings).result()
    assert any(o.promoted for o in outcomes), [o.reasons for o in outcomes]
    moves = assert_consistent(settings)
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [("promote", None, "1"), ("promote", "1", "2")]


@pytest.mark.parametrize("window", WINDOWS)
def test_promotion_killed_then_the_next_run_promotes(bootstrapped, caplog, window):
    settings = bootstrapped
    killed(settings, "continuous-training", window)

    promoted_next(settings)
    # Killed before the registry moved, the next run says it moved it; killed after, nothing was left to do.
    assert repaired(caplog, "@champion = 1, @previous-champion = none") == (window == "claimed")
    moves = assert_consistent(settings)
    # The killed run's promotion stands, once; the next run promoted from it.
    assert [(m.action, m.from_version, m.to_version) for m in moves[:3]] == [
        ("promote", None, "1"), ("promote", "1", "2"), ("promote", "2", "3"),
    ]


@pytest.mark.parametrize("window", WINDOWS)
def test_rollback_killed_then_run_again_moves_back_once(bootstrapped, caplog, window):
    settings = bootstrapped
    outcomes = completed(continuous_training, settings).result()
    assert any(o.promoted and o.champion_version == "2" for o in outcomes), [o.reasons for o in outcomes]
    killed(settings, "rollback", window, REASON)

    # The operator runs the same rollback again: it finishes the one that was cut short and
    # goes no further back.
    state = completed(rollback, REASON, settings=settings)
    assert state.result().to_version == "1" and "from version 2 to version 1" in state.message
    assert repaired(caplog, "@champion = 2, @previous-champion = 1") == (window == "claimed")
    moves = assert_consistent(settings)
    assert [(m.action, m.from_version, m.to_version, m.reason) for m in moves[2:]] == [("rollback", "2", "1", REASON)]

    promoted_next(settings)
    moves = assert_consistent(settings)
    assert [(m.action, m.from_version, m.to_version) for m in moves[2:4]] == [("rollback", "2", "1"), ("promote", "1", "3")]


def test_an_update_killed_during_training_is_resumed_from_its_last_epoch(bootstrapped, monkeypatch):
    settings = bootstrapped  # weeks 2 and 3 wait: week 3 brings enough rows for an update
    killed(settings, "continuous-training", "training", batch_lease_seconds=1)
    engine = ledger.connect(settings.ledger_url)
    week3 = next(b for b in ledger.all_batches(engine) if b.file_name == "interactions-week003.csv")
    assert week3.decision == "update" and week3.update_attempts == 1 and week3.consumed_by_version is None
    (progress,) = settings.checkpoints_dir.glob("training-*.pt")
    assert Recommender.load(progress).training.epochs_done == 1  # the killed run finished one epoch

    resumed_at = []
    resume = train_module._resume
    monkeypatch.setattr(train_module, "_resume", lambda recommender, path: resumed_at.append(path) or resume(recommender, path))
    time.sleep(1.5)  # the killed run's lease lapses
    outcomes = completed(continuous_training, settings).result()
    (again,) = [o for o in outcomes if o.batch == "interactions-week003.csv"]
    assert again.update and again.challenger_recall is not None  # taken up again, and reported
    assert resumed_at == [progress]  # from the killed run's checkpoint, not from the start
    assert not progress.exists()  # finished: the challenger file is the result
    week3 = next(b for b in ledger.all_batches(engine) if b.file_name == "interactions-week003.csv")
    assert week3.update_attempts == 2 and week3.decision == "trained" and week3.lease_until is None
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(again.mlflow_run_id)
    assert run.data.params["epochs"] == str(settings.finetune_epochs)  # one epoch then, the rest now
    assert_consistent(settings)
