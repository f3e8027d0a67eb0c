"""A Prefect server and an MLflow tracking server on loopback, with their state under one folder.

    python -m flows servers            # what `make servers` runs; Ctrl-C stops both

Each server runs in its own process group (`mlflow server` starts job-runner and consumer
children), so stopping one ends everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    name: str
    url: str  # what a client sets: PREFECT_API_URL or MLFLOW_TRACKING_URI
    health: str
    process: subprocess.Popen
    log: Path


def _bin(name: str) -> str:
    """The executable of this environment (works without an activated virtualenv)."""
    return str(Path(sys.executable).parent / name)


def _env(**extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _spawn(name: str, command: list[str], env: dict[str, str], log: Path, url: str, health: str) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, url, health, process, log)


def start_prefect(state: Path, port: int) -> Server:
    home = state / "prefect"
    return _spawn(
        "prefect", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        # The UI asks the API at PREFECT_UI_API_URL, which otherwise stays on port 4200.
        _env(PREFECT_HOME=str(home), PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api"), state / "logs" / "prefect-server.log",
        f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}/api/health",
    )


def start_mlflow(state: Path, port: int, backend_store_uri: str | None = None) -> Server:
    """``backend_store_uri``: any SQLAlchemy URL MLflow accepts (PostgreSQL at scale); default a
    SQLite file under ``state``. Artifacts stay under ``state`` either way."""
    (state / "mlflow-artifacts").mkdir(parents=True, exist_ok=True)
    return _spawn(
        "mlflow",
        [
            _bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_store_uri or f"sqlite:///{(state / 'mlflow.db').resolve()}",
            "--artifacts-destination", str((state / "mlflow-artifacts").resolve()),
        ],
        _env(), state / "logs" / "mlflow-server.log",
        f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/health",
    )


def wait_ready(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
            raise RuntimeError(f"the {server.name} server exited with status {server.process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(server.health, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {server.name} server did not answer {server.health} within {timeout:.0f} s (log: {server.log})")
        time.sleep(1)


def stop(server: Server, timeout: float = 30.0) -> None:
    """End the server's whole process group: SIGTERM, then SIGKILL after ``timeout``."""
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


def run(state: Path, prefect_port: int, mlflow_port: int, mlflow_backend_store_uri: str | None = None) -> int:
    """Start both servers, print where they are, and keep them until Ctrl-C or SIGTERM."""
    prefect, mlflow = start_prefect(state, prefect_port), start_mlflow(state, mlflow_port, mlflow_backend_store_uri)
    servers = [prefect, mlflow]
    stopping = False

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for server in servers:
            wait_ready(server)
        print(f"Prefect UI and API: http://127.0.0.1:{prefect_port}   (export PREFECT_API_URL={prefect.url})")
        print(f"MLflow UI and API:  {mlflow.url}   (export MLFLOW_TRACKING_URI={mlflow.url})")
        print(f"State and logs under {state}; Ctrl-C stops both.", flush=True)
        while not stopping:
            for server in servers:
                if server.process.poll() is not None:
                    print(f"error: the {server.name} server exited (log: {server.log})", file=sys.stderr)
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            stop(server)
    print("Both servers stopped.")
    return 0
