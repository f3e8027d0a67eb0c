"""freshrec on PostgreSQL: MLflow's tracking server with a PostgreSQL backend store, and the
ledger on PostgreSQL, driven by the real flows (bootstrap, continuous training, rollback).

A throwaway cluster from Debian's `postgresql` package (what .ci/run installs) is started on a
free loopback port with two databases, `mlflow` and `ledger`; `mlflow server` runs on the first
as `flows.servers.start_mlflow(..., backend_store_uri=...)` runs it for users.

Risks guarded: SQL that works on SQLite only (types, constraints, time zones, the unique
sequence that locks promotions), an alias in the registry that disagrees with the ledger's
trail, and a test that passes on a silent SQLite fallback: the databases are read with psql.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.settings import PREFECT_API_URL

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import bootstrap
from flows.continuous_training import continuous_training
from flows.rollback import rollback
from flows.servers import start_mlflow, stop, wait_ready
from models.settings import Settings
from tasks import ledger
from tasks.registry import PREVIOUS_ALIAS
from tests.conftest import CHILD_ENV, TINY_SHOP, TINY_SHOP_SETTINGS, free_port
from tests.e2e.postgres import throwaway_cluster

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port with databases mlflow and ledger."""
    with throwaway_cluster(("mlflow", "ledger")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` with its backend store in the cluster's mlflow database; yields its URL."""
    state = tmp_path_factory.mktemp("servers")
    server = start_mlflow(state, free_port(), backend_store_uri=postgres.url("mlflow"))
    try:
        wait_ready(server, timeout=180)
        yield server.url
    finally:
        stop(server)
    assert not (state / "mlflow.db").exists(), "the MLflow server fell back to SQLite"


def test_registry_and_ledger_on_postgresql(postgres, mlflow_server, prefect_server, tmp_path, monkeypatch):
    # Restored on teardown: mlflow.set_tracking_uri exports it, and the server is gone after this module.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    settings = Settings(
        home=tmp_path / "freshrec",
        mlflow_tracking_uri=mlflow_server,
        ledger_url=postgres.url("ledger"),
        **TINY_SHOP_SETTINGS,
        # This test is about the stores, not the gate (tested in tests/code): a challenger that
        # reaches the value threshold always promotes, so version 2 exists on any machine.
        min_improvement=-1.0,
        min_relative_improvement=-1.0,
        max_forgetting=1.0,
    )
    name = settings.registered_model_name
    # The registry named too: an earlier test of the session may have set the global registry URI.
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)

    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    state = bootstrap(settings, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()[-1].champion_version == "1"

    # Week 2 is quiet and too small to act on; week 3 has bad rows, drifts and brings the volume.
    write_weeks(settings.landing_dir, range(2, 4), drift_from_week=3, bad_rows_weeks=(3,), config=TINY_SHOP)
    state = continuous_training(settings, return_state=True)
    assert state.is_completed(), state.message
    outcomes = {o.batch: o for o in state.result()}  # the drifted week brings a catalog file too
    week2, week3 = outcomes["interactions-week002.csv"], outcomes["interactions-week003.csv"]
    assert not week2.update and week2.champion_version == "1"
    assert week3.status == "partially_accepted" and week3.rows_quarantined > 0
    assert week3.update and week3.promoted and week3.champion_version == "2", week3.reasons

    # The registry and the ledger's trail agree on where the aliases are.
    engine = ledger.connect(settings.ledger_url)
    assert engine.dialect.name == "postgresql"
    moves = ledger.moves(engine, name)
    assert [(m.seq, m.alias, m.action, m.from_version, m.to_version) for m in moves] == [
        (1, "champion", "promote", None, "1"), (2, "champion", "promote", "1", "2"),
    ]
    assert all(m.moved_at.tzinfo is not None for m in moves) and moves[0].moved_at <= moves[1].moved_at
    aliases = {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    assert aliases == {"champion": moves[-1].to_version, PREVIOUS_ALIAS: moves[-1].from_version}
    v1, v2 = client.get_model_version(name, "1"), client.get_model_version(name, "2")
    assert moves[0].mlflow_run_id == v1.run_id and moves[1].mlflow_run_id == v2.run_id == week3.mlflow_run_id
    assert v1.tags["freshrec.parent_version"] == "none" and v2.tags["freshrec.parent_version"] == "1"
    for version in (v1, v2):
        assert version.tags["freshrec.run_id"] == version.run_id
        assert version.tags["freshrec.verdict"] == "promote"
        assert json.loads(version.tags["freshrec.data_range"])["trained_until"]
        assert client.get_run(version.run_id).data.tags["freshrec.promotion"] == f"promoted to version {version.version}"

    # Every row is accounted for, and each version consumed the batches its tags name.
    rows = ledger.all_batches(engine)
    interactions = {r.file_name: r for r in rows if r.kind == "interactions"}
    assert sorted(interactions) == [f"interactions-week{w:03d}.csv" for w in range(4)]
    assert all(r.rows_in == r.rows_accepted + r.rows_quarantined for r in rows), rows
    assert all(r.rows_in > 0 for r in interactions.values()), rows
    # The second call wrote the first catalog again under another name: found by its hash.
    assert {r.file_name: r.status for r in rows if r.kind == "catalog"}["catalog-week002.csv"] == "duplicate"
    assert interactions["interactions-week003.csv"].rows_quarantined == week3.rows_quarantined > 0
    assert {f: r.consumed_by_version for f, r in interactions.items()} == {
        "interactions-week000.csv": "1", "interactions-week001.csv": "1", "interactions-week002.csv": "2", "interactions-week003.csv": "2",
    }
    for version in (v1, v2):
        consumed = sorted(r.id for r in rows if r.consumed_by_version == version.version)
        assert version.tags["freshrec.batches"] == ",".join(map(str, consumed))
    assert all(r.min_event_time.tzinfo is not None for r in interactions.values())

    state = rollback("week 3 recommendations look wrong", settings=settings, return_state=True)
    assert state.is_completed(), state.message
    assert "from version 2 to version 1" in state.message
    moves = ledger.moves(engine, name)
    assert [(m.seq, m.action, m.from_version, m.to_version, m.reason) for m in moves[2:]] == [
        (3, "rollback", "2", "1", "week 3 recommendations look wrong"),
    ]
    assert moves[2].mlflow_run_id == v1.run_id and moves[2].flow_run_id
    # Version 1 replaced nothing, so there is no previous champion any more.
    assert {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()} == {"champion": "1"}
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    rolled_back = json.loads(client.get_model_version(name, "2").tags["freshrec.rolled_back"])
    assert rolled_back["to"] == "1" and rolled_back["reason"] == "week 3 recommendations look wrong"

    # The rows are in PostgreSQL itself, read by psql: no SQLite store stands in for either.
    assert postgres.psql("mlflow", "SELECT name FROM registered_models") == [[name]]
    assert postgres.psql("mlflow", f"SELECT version, run_id FROM model_versions WHERE name = '{name}' ORDER BY version") == [
        ["1", v1.run_id], ["2", v2.run_id],
    ]
    assert postgres.psql("mlflow", f"SELECT alias, version FROM registered_model_aliases WHERE name = '{name}'") == [["champion", "1"]]
    assert postgres.psql("mlflow", f"SELECT value FROM model_version_tags WHERE name = '{name}' AND version = 2 AND key = 'freshrec.parent_version'") == [["1"]]
    assert postgres.psql("ledger", "SELECT seq, action, from_version, to_version FROM alias_moves ORDER BY seq") == [
        ["1", "promote", "", "1"], ["2", "promote", "1", "2"], ["3", "rollback", "2", "1"],
    ]
    balances = postgres.psql("ledger", "SELECT file_name, rows_in, rows_accepted, rows_quarantined FROM batches ORDER BY id")
    assert [row[0] for row in balances] == [r.file_name for r in rows]
    assert all(int(n_in) == int(accepted) + int(quarantined) for _, n_in, accepted, quarantined in balances)
    assert not list(settings.home.glob("*.db")), "a SQLite store was created beside the data"

    # `python -m flows history` reads the same trail and finds the registry in agreement.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"} | CHILD_ENV
    env |= {
        "FRESHREC_HOME": str(settings.home),
        "FRESHREC_LEDGER_URL": settings.ledger_url,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }
    history = subprocess.run([sys.executable, "-m", "flows", "history"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert history.returncode == 0, history.stderr[-2000:]
    assert [line.split()[4:7] for line in history.stdout.splitlines()[2:]] == [
        ["promote", "-", "1"], ["promote", "1", "2"], ["rollback", "2", "1"],
    ]
