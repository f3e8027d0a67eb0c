"""A Prefect server and an MLflow tracking server on loopback, with their state under one folder.

    python -m flows servers                 # what `make servers` runs; Ctrl-C stops both
    python -m flows servers --mlflow-auth   # MLflow's basic-auth app (`make servers MLFLOW_AUTH=1`)

Each server runs in its own process group (`mlflow server` starts job-runner and consumer
children), so stopping one ends everything it started.

With ``--mlflow-auth`` every MLflow request needs a user: the admin (MLFLOW_AUTH_ADMIN_USERNAME,
default ``admin``, and MLFLOW_AUTH_ADMIN_PASSWORD) and the flows' user (MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD, the variables the MLflow client reads), created or given that
password once the server is up. Passwords travel in environment variables only: the generated
``mlflow-auth.ini`` holds none, and no log or console line names one.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The admin password older MLflow versions shipped in basic_auth.ini: public, so refused.
LEGACY_ADMIN_PASSWORD = "password1234"
# MLflow's own rule for a user's password (mlflow.utils.validation._validate_password).
MIN_PASSWORD_LENGTH = 12
# Secrets a server does not need are not passed on to it; the MLflow server gets its store's URL
# and the two of MlflowAuth explicitly.
SECRET_VARIABLES = (
    "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_BACKEND_STORE_URI",
)


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
    inherited = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    return {**inherited, "PATH": path, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


@dataclass(frozen=True)
class MlflowAuth:
    """Who MLflow's basic-auth app knows: its admin, and the user the flows run as.

    The passwords are left out of ``repr``, so a traceback or a log line never shows one.
    """

    admin_username: str
    admin_password: str = field(repr=False)
    flows_username: str
    flows_password: str = field(repr=False)
    # Signs the sign-up form's CSRF token; one per start unless MLFLOW_FLASK_SERVER_SECRET_KEY is set.
    flask_secret_key: str = field(repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "MlflowAuth":
        """Read the variables MLflow itself reads; raise ValueError naming what is missing or unsafe."""
        admin = environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
        admin_password = environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
        flows, flows_password = environ.get("MLFLOW_TRACKING_USERNAME", ""), environ.get("MLFLOW_TRACKING_PASSWORD", "")
        problems = []
        if not admin_password:
            problems.append("MLFLOW_AUTH_ADMIN_PASSWORD is not set: it is the password of MLflow's admin user")
        elif admin_password == LEGACY_ADMIN_PASSWORD:
            problems.append("MLFLOW_AUTH_ADMIN_PASSWORD is the default that old MLflow versions shipped, known to everyone: choose another")
        elif len(admin_password) < MIN_PASSWORD_LENGTH:
            problems.append(f"MLFLOW_AUTH_ADMIN_PASSWORD is shorter than {MIN_PASSWORD_LENGTH} characters (MLflow's minimum)")
        if not flows:
            problems.append("MLFLOW_TRACKING_USERNAME is not set: the user the flows log and register as")
        elif flows == admin:
            problems.append(f"MLFLOW_TRACKING_USERNAME is the admin user {admin!r}: give the flows a user of their own")
        if not flows_password:
            problems.append("MLFLOW_TRACKING_PASSWORD is not set: the password of the flows' user")
        elif len(flows_password) < MIN_PASSWORD_LENGTH:
            problems.append(f"MLFLOW_TRACKING_PASSWORD is shorter than {MIN_PASSWORD_LENGTH} characters (MLflow's minimum)")
        if problems:
            raise ValueError("MLflow authentication needs: " + "; ".join(problems))
        secret_key = environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_urlsafe(32)
        return cls(admin, admin_password, flows, flows_password, secret_key)


def write_auth_config(state: Path, auth: MlflowAuth) -> Path:
    """The basic-auth app's configuration, mode 0600, its user database beside it.

    Authenticated users may read everything (``default_permission = READ``) and create new
    experiments and registered models (the creator gets MANAGE on them); changing one that exists
    needs a grant on it. Requests without a user are refused (401). The admin password stays in
    the environment.
    """
    path = state / "mlflow-auth.ini"
    database = f"sqlite:///{(state / 'mlflow-auth.db').resolve()}"
    text = "\n".join([
        "# Written by `python -m flows servers --mlflow-auth` at every start; holds no password.",
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {database}".replace("%", "%%"),  # configparser reads % as interpolation
        f"admin_username = {auth.admin_username}".replace("%", "%%"),
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ])
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file keeps its mode through O_CREAT
        out.write(text)
    return path


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


def start_mlflow(state: Path, port: int, backend_store_uri: str | None = None, auth: MlflowAuth | None = None) -> Server:
    """``backend_store_uri``: any SQLAlchemy URL MLflow accepts (PostgreSQL at scale); default a
    SQLite file under ``state``. Artifacts stay under ``state`` either way. With ``auth``, MLflow's
    basic-auth app, its users in ``state/mlflow-auth.db``; then call ``ensure_flows_user``."""
    (state / "mlflow-artifacts").mkdir(parents=True, exist_ok=True)
    command = [
        _bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--artifacts-destination", str((state / "mlflow-artifacts").resolve()),
    ]
    # The store's URL (with its password) in the environment, which other users cannot read,
    # not in the arguments, which `ps` shows everyone.
    env = _env(MLFLOW_BACKEND_STORE_URI=backend_store_uri or f"sqlite:///{(state / 'mlflow.db').resolve()}")
    # MLflow's job runner (GenAI scorers, prompt optimisation, trace roll-ups: nothing freshrec
    # uses) starts seven more processes, each importing MLflow: off unless the environment asks.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if auth is not None:
        # The stores, artifacts and user hashes are what authentication protects: no other local user reads them.
        state.chmod(0o700)
        command += ["--app-name", "basic-auth"]
        env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(state, auth).resolve()),
            "MLFLOW_AUTH_ADMIN_PASSWORD": auth.admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": auth.flask_secret_key,
        }
    return _spawn("mlflow", command, env, state / "logs" / "mlflow-server.log", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/health")


def _admin_request(server: Server, auth: MlflowAuth, method: str, path: str, body: dict) -> tuple[int, dict]:
    token = base64.b64encode(f"{auth.admin_username}:{auth.admin_password}".encode()).decode()
    request = urllib.request.Request(
        f"{server.url}{path}", data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"message": text[:300]}


def ensure_flows_user(server: Server, auth: MlflowAuth) -> str:
    """Create the flows' user with the admin's credentials, or give it the password of the
    environment if it exists (the environment is the truth). Returns "created" or "updated"."""
    status, answer = _admin_request(server, auth, "POST", "/api/2.0/mlflow/users/create", {"username": auth.flows_username, "password": auth.flows_password})
    if status == 200:
        return "created"
    if answer.get("error_code") == "RESOURCE_ALREADY_EXISTS":
        status, answer = _admin_request(
            server, auth, "PATCH", "/api/2.0/mlflow/users/update-password", {"username": auth.flows_username, "password": auth.flows_password},
        )
        if status == 200:
            return "updated"
    if status == 401:
        raise PermissionError(
            f"MLflow refused the admin user {auth.admin_username!r} with MLFLOW_AUTH_ADMIN_PASSWORD: MLflow sets the admin's "
            f"password only when it creates the admin, at the first start on an empty user database (mlflow-auth.db in the "
            "state dir); export the password it was created with (or change it first: PATCH /api/2.0/mlflow/users/update-password)"
        )
    raise RuntimeError(f"MLflow did not create the flows' user {auth.flows_username!r}: HTTP {status} {answer.get('message', answer)}")


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


def run(
    state: Path, prefect_port: int, mlflow_port: int, mlflow_backend_store_uri: str | None = None, mlflow_auth: MlflowAuth | None = None,
) -> int:
    """Start both servers, print where they are, and keep them until Ctrl-C or SIGTERM."""
    prefect, mlflow = start_prefect(state, prefect_port), start_mlflow(state, mlflow_port, mlflow_backend_store_uri, mlflow_auth)
    servers = [prefect, mlflow]
    stopping = False

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for server in servers:
            wait_ready(server)
        if mlflow_auth is not None:
            done = ensure_flows_user(mlflow, mlflow_auth)
        print(f"Prefect UI and API: http://127.0.0.1:{prefect_port}   (export PREFECT_API_URL={prefect.url})")
        print(f"MLflow UI and API:  {mlflow.url}   (export MLFLOW_TRACKING_URI={mlflow.url})")
        if mlflow_auth is not None:
            print(
                f"MLflow asks every request for a user: admin {mlflow_auth.admin_username!r}; the flows' user "
                f"{mlflow_auth.flows_username!r} {done} (the flows read MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            )
        print(f"State and logs under {state}; Ctrl-C stops both.", flush=True)
        while not stopping:
            for server in servers:
                if server.process.poll() is not None:
                    print(f"error: the {server.name} server exited (log: {server.log})", file=sys.stderr)
                    return 1
            time.sleep(1)
    except (RuntimeError, TimeoutError, PermissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            stop(server)
    print("Both servers stopped.")
    return 0
