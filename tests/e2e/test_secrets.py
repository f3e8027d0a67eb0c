"""No credential leaves the worker: a planted password is searched for everywhere it could land.

A throwaway PostgreSQL cluster that authenticates over TCP holds the ledger and MLflow's store;
the password is in the ledger URL (from FRESHREC_LEDGER_URL) and in the tracking URI (from a
Prefect Secret block). `python -m flows` runs against a real `prefect server start`: a run that
fails before the bootstrap (its message names the store), the bootstrap, an update, a deployment
entrypoint with overrides, a run with a wrong password, and the ledger and history commands.
Then the password is looked for in the Prefect server's database and log, the commands' output,
the MLflow store (pg_dump and artifacts), the ledger (pg_dump) and every file under the home.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_checks.sources.synthetic import write_weeks
from flows.servers import start_prefect, stop, wait_ready
from tests.conftest import CHILD_ENV, TINY_SHOP, TINY_SHOP_SETTINGS, free_port
from tests.e2e.postgres import throwaway_cluster

pytestmark = pytest.mark.slow
PASSWORD = "Pl4ntedPassw0rd-7f3a9c"
WRONG_PASSWORD = "Wr0ngPassw0rd-e41b2d"  # a second secret: what a failing connection prints
BLOCK = "freshrec-mlflow-tracking-uri"


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def stores():
    with throwaway_cluster(("mlflow", "ledger"), password=PASSWORD) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    state = tmp_path_factory.mktemp("prefect-server")
    server = start_prefect(state, free_port())
    try:
        wait_ready(server, timeout=180)
        yield server, state
    finally:
        stop(server)


def test_a_planted_password_reaches_no_store_log_or_parameter(stores, prefect_api, tmp_path):
    server, server_state = prefect_api
    home, work = tmp_path / "freshrec", tmp_path / "cwd"
    work.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FRESHREC_", "MLFLOW_", "PREFECT_"))} | CHILD_ENV
    base |= {
        "PREFECT_API_URL": server.url,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "FRESHREC_HOME": str(home),
        "FRESHREC_LEDGER_URL": stores.url("ledger"),
        "FRESHREC_MLFLOW_TRACKING_URI_SECRET_BLOCK": BLOCK,
        **{f"FRESHREC_{name.upper()}": str(value) for name, value in TINY_SHOP_SETTINGS.items()},
    }
    outputs: list[str] = []

    def flows(*args: str, env: dict[str, str] = base, expect: int = 0) -> subprocess.CompletedProcess:
        # From a directory of its own: nothing may land in ./mlruns of whoever runs it.
        done = subprocess.run([sys.executable, "-m", "flows", *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        outputs.extend([done.stdout, done.stderr])
        assert done.returncode == expect, f"flows {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return done

    # The tracking URI, with its password, is a Secret block on the Prefect server.
    saved = subprocess.run(
        [sys.executable, "-c", f"from prefect.blocks.system import Secret; Secret(value={stores.url('mlflow')!r}).save({BLOCK!r})"],
        env=base, capture_output=True, text=True, timeout=120,
    )
    assert saved.returncode == 0, saved.stderr[-2000:]

    failed = flows("run", expect=1)  # no champion yet: the message names the store, masked
    assert "postgres:***@127.0.0.1" in failed.stderr and "bootstrap" in failed.stderr
    assert "postgres:***@127.0.0.1" in flows("history").stdout  # no moves yet: says where it looked
    write_weeks(home / "landing", range(0, 2), config=TINY_SHOP)
    flows("bootstrap")
    write_weeks(home / "landing", range(2, 4), drift_from_week=3, config=TINY_SHOP)
    flows("run")
    # A deployment's entrypoint, with overrides, as a worker runs it.
    deployed = subprocess.run(
        [sys.executable, "-c", "from flows.deployed import continuous_training; continuous_training(overrides={'drift_share_threshold': 0.5})"],
        cwd=work, env=base, capture_output=True, text=True, timeout=600,
    )
    outputs.extend([deployed.stdout, deployed.stderr])
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    flows("ledger")
    flows("history")
    wrong = base | {"FRESHREC_LEDGER_URL": stores.url("ledger").replace(PASSWORD, WRONG_PASSWORD)}
    refused = flows("run", env=wrong, expect=1)
    assert "password authentication failed" in refused.stderr

    # The flows did work on these stores: a champion and its trail.
    assert stores.psql("mlflow", "SELECT alias FROM registered_model_aliases") == [["champion"]]
    assert stores.psql("ledger", "SELECT count(*) FROM alias_moves")[0][0] != "0"
    assert not (work / "mlruns").exists() and not (work / "mlartifacts").exists()

    for secret in (PASSWORD, WRONG_PASSWORD):
        assert not [o for o in outputs if secret in o], "a command printed a password"
        assert not files_holding(server_state, secret), "the Prefect server's database or log holds a password"
        assert secret not in stores.dump("mlflow") and secret not in stores.dump("ledger")
        assert not files_holding(home, secret), "a file under the freshrec home holds a password"
        assert not files_holding(tmp_path / "prefect-client", secret)
    # The search finds what is there: the runs' parameters and messages name the stores, masked.
    assert files_holding(server_state, "postgres:***@127.0.0.1")


def test_secret_blocks_fill_the_store_urls_and_the_mlflow_password(prefect_server, tmp_path, monkeypatch):
    from prefect.blocks.system import Secret

    from models.settings import Settings
    from tasks.tracking import export_tracking_password

    ledger_url = f"sqlite:///{tmp_path / 'from-a-block.db'}"
    Secret(value=ledger_url).save("test-ledger-url", overwrite=True)
    Secret(value=PASSWORD).save("test-mlflow-password", overwrite=True)
    settings = Settings(home=tmp_path, ledger_url_secret_block="test-ledger-url", mlflow_tracking_password_secret_block="test-mlflow-password")
    assert settings.ledger_url == ledger_url
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")  # empty counts as unset; removed again after the test
    export_tracking_password(settings)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-environment")  # the environment wins
    export_tracking_password(settings)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-the-environment"
    with pytest.raises(ValueError, match="no Prefect Secret block named 'missing-block'"):
        Settings(home=tmp_path, ledger_url_secret_block="missing-block")


def test_the_mlflow_server_of_make_servers_keeps_its_store_password_out_of_the_process_list(stores, tmp_path):
    from flows.servers import start_mlflow

    server = start_mlflow(tmp_path / "servers", free_port(), backend_store_uri=stores.url("mlflow"))
    try:
        wait_ready(server, timeout=180)
        seen: set[bytes] = set()  # every command line of the group, in any of the samples
        for _ in range(6):  # MLflow's job runner starts its consumers beside the server, within seconds
            group = [
                stat.parent for stat in Path("/proc").glob("[0-9]*/stat")
                if stat.exists() and _process_group(stat) == server.process.pid
            ]
            assert group, "no process of the server's group found"
            seen |= {_command_line(process) for process in group}
            time.sleep(0.5)
        assert not [c for c in seen if PASSWORD.encode() in c], "a password is in a server's arguments (ps shows them)"
        # Nor does it start MLflow's job runner, seven processes freshrec has no use for.
        assert not [c for c in seen if b"huey" in c], sorted(seen)
    finally:
        stop(server)
    assert not files_holding(tmp_path / "servers", PASSWORD), "the MLflow server's log or state holds the password"


def _command_line(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:  # ended while we read
        return b""


def _process_group(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):  # ended while we read
        return None
