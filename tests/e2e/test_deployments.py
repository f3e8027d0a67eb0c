"""freshrec as users run it: real servers, `prefect deploy`, a process worker, a triggered run.

Starts `prefect server start` and `mlflow server` (SQLite backend, local artifact root) on free
loopback ports, each in its own process group, deploys prefect.yaml, starts a process worker,
runs the bootstrap deployment with `prefect deployment run`, waits for it, then checks through
MLflow's REST API that the registered model has a champion and through Prefect's API that the
run created its report artifact. Every process it started is stopped, whatever happens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from data_checks.sources.synthetic import write_weeks
from flows.servers import Server, start_mlflow, start_prefect, stop, wait_ready
from tests.conftest import TINY_SHOP

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None, headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def servers(tmp_path):
    state = tmp_path / "servers"
    started: list[Server] = []
    try:
        started.append(start_prefect(state, free_port()))
        started.append(start_mlflow(state, free_port()))
        for server in started:
            wait_ready(server, timeout=180)
        yield started[0].url, started[1].url
    finally:
        for server in started:
            stop(server)


def test_bootstrap_deployment_runs_on_a_process_worker(servers, tmp_path):
    prefect_api, mlflow_uri = servers
    home = tmp_path / "freshrec"
    write_weeks(home / "landing", range(0, 2), config=TINY_SHOP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "FRESHREC_HOME": str(home),
        "FRESHREC_MIN_NEW_ROWS": "500",
        "FRESHREC_SCRATCH_EPOCHS": "3",
    }

    def prefect(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    prefect("work-pool", "create", "freshrec-process", "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--all")
    deployments = get_json(f"{prefect_api}/deployments/filter", {})
    assert {d["name"] for d in deployments} == {"continuous-training-daily", "bootstrap", "rollback"}
    assert all(d["enforce_parameter_schema"] and "freshrec" in d["tags"] for d in deployments)

    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "freshrec-process"], cwd=REPO, env=env,
        stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        started = prefect("deployment", "run", "bootstrap/bootstrap")
        run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)
        deadline = time.monotonic() + 600
        while True:
            state = get_json(f"{prefect_api}/flow_runs/{run_id}")["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, f"the bootstrap run is still {state['type']} after 600 s"
            time.sleep(3)
        assert state["type"] == "COMPLETED", (state, (tmp_path / "worker.log").read_text()[-4000:])
    finally:
        stop(Server("worker", "", "", worker, tmp_path / "worker.log"))
        worker_log.close()

    # MLflow's REST API: the registered model has a champion.
    model = urllib.parse.quote("ecommerce-recommender")
    champion = get_json(f"{mlflow_uri}/api/2.0/mlflow/registered-models/alias?name={model}&alias=champion")["model_version"]
    assert champion["version"] == "1" and champion["run_id"]
    # Prefect's API: the run published its report.
    artifacts = get_json(f"{prefect_api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert "freshrec-report" in {a["key"] for a in artifacts}
