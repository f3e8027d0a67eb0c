"""docs/scaling.md's container deployments, against a real Prefect server.

`docs/prefect.containers.yaml` is deployed with `prefect deploy` to a Docker and to a Kubernetes
work pool, as the document says; no container is started (that needs a Docker engine or a
cluster). Risks guarded: the containers file falling out of step with prefect.yaml (a
deployment, schedule or parameter missing), variables left unresolved in the job variables.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.servers import start_prefect, stop, wait_ready
from tests.conftest import free_port
from tests.e2e.test_deployments import BIN, REPO, get_json

pytestmark = pytest.mark.slow
SAME = ("name", "entrypoint", "tags", "triggers", "schedules", "concurrency_limit", "enforce_parameter_schema", "parameters")


def deployments_of(path: Path) -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(path.read_text())["deployments"]}


def test_the_containers_file_has_the_deployments_of_prefect_yaml():
    process, containers = deployments_of(REPO / "prefect.yaml"), deployments_of(REPO / "docs" / "prefect.containers.yaml")
    assert set(process) == set(containers)
    for name, deployment in process.items():
        assert {k: deployment.get(k) for k in SAME} == {k: containers[name].get(k) for k in SAME}, name


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One Prefect server for both pools: the second deploy updates the same four deployments."""
    server = start_prefect(tmp_path_factory.mktemp("servers"), free_port())
    try:
        wait_ready(server, timeout=180)
        yield server
    finally:
        stop(server)


@pytest.mark.parametrize("pool_type", ["docker", "kubernetes"])
def test_the_containers_file_deploys_to_a_container_work_pool(server, tmp_path, pool_type):
    pool, image = f"freshrec-{pool_type}", "registry.example.com/freshrec:0.1.0"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"},
        "PREFECT_API_URL": server.url, "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "FRESHREC_WORK_POOL": pool, "FRESHREC_IMAGE": image,
        "MLFLOW_TRACKING_URI": "https://mlflow.internal", "MLFLOW_TRACKING_USERNAME": "freshrec-flows",
    }
    for command in (
        ["work-pool", "create", pool, "--type", pool_type],
        ["--no-prompt", "deploy", "--all", "--prefect-file", "docs/prefect.containers.yaml"],
    ):
        done = subprocess.run([str(BIN / "prefect"), *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"prefect {' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert get_json(f"{server.url}/work_pools/{pool}")["type"] == pool_type
    deployments = get_json(f"{server.url}/deployments/filter", {})
    assert sorted(d["name"] for d in deployments) == ["backtest", "bootstrap", "continuous-training", "rollback"]
    for deployment in deployments:
        assert deployment["work_pool_name"] == pool
        variables = deployment["job_variables"]
        assert variables["image"] == image and variables["volumes"] == ["freshrec-data:/data"]
        assert variables["env"]["FRESHREC_HOME"] == "/data/freshrec"
        assert variables["env"]["MLFLOW_TRACKING_URI"] == "https://mlflow.internal"
        assert variables["env"]["MLFLOW_TRACKING_USERNAME"] == "freshrec-flows"
        # Stored in Prefect's database: block names, never a URL with its password.
        assert variables["env"]["FRESHREC_LEDGER_URL_SECRET_BLOCK"] == "freshrec-ledger-url"
        assert variables["env"]["FRESHREC_MLFLOW_TRACKING_PASSWORD_SECRET_BLOCK"] == "freshrec-mlflow-password"
        assert not {"FRESHREC_LEDGER_URL", "MLFLOW_TRACKING_PASSWORD"} & set(variables["env"])
        assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/freshrec"}}]
