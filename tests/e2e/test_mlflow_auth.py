"""MLflow with authentication: `python -m flows servers --mlflow-auth` (what `make servers
MLFLOW_AUTH=1` runs) started as a user starts it, and the real bootstrap flow run against it with
the flows' credentials from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.

Risks guarded: a tracking server anyone who reaches it can write to (whoever moves @champion
chooses the code `mlflow models serve` runs); a reader who can move the champion or register a
version; flows that stop working once credentials are required; a password on disk beside the
stores or in a log. The tests of this module share one server and run in file order: the last
one stops it and reads every file it left.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import bootstrap
from models.settings import Settings
from tests.conftest import CHILD_ENV, TINY_SHOP, TINY_SHOP_SETTINGS, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ADMIN, FLOWS, READER = "admin", "freshrec-flows", "freshrec-reader"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
READY_LINE = "Ctrl-C stops both."


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without a developer's freshrec or MLflow settings and credentials."""
    dropped = ("MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", *CREDENTIAL_VARIABLES)
    return {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k not in dropped} | CHILD_ENV | extra


def password(label: str) -> str:
    return f"{label}-{secrets.token_urlsafe(18)}"


@dataclass
class AuthServers:
    process: subprocess.Popen
    state: Path
    console: Path  # the command's stdout and stderr
    url: str
    passwords: dict[str, str] = field(repr=False)  # every user the test knows, with its password

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # what `make servers` does on Ctrl-C or a kill
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def auth_servers(tmp_path_factory):
    """`python -m flows servers --mlflow-auth` on free loopback ports, state in a temporary folder."""
    root = tmp_path_factory.mktemp("auth")
    state, console, mlflow_port = root / "servers", root / "console.log", free_port()
    passwords = {ADMIN: password("admin"), FLOWS: password("flows")}
    env = clean_env(
        MLFLOW_AUTH_ADMIN_PASSWORD=passwords[ADMIN], MLFLOW_TRACKING_USERNAME=FLOWS, MLFLOW_TRACKING_PASSWORD=passwords[FLOWS],
    )
    command = [
        sys.executable, "-m", "flows", "servers", "--mlflow-auth", "--state-dir", str(state),
        "--prefect-port", str(free_port()), "--mlflow-port", str(mlflow_port),
    ]
    with open(console, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    servers = AuthServers(process, state, console, f"http://127.0.0.1:{mlflow_port}", passwords)
    try:
        deadline = time.monotonic() + 240
        while READY_LINE not in console.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`{' '.join(command[1:])}` did not start (status {process.poll()}):\n{console.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield servers
    finally:
        servers.stop()


def login(monkeypatch: pytest.MonkeyPatch, username: str | None = None, secret: str | None = None) -> None:
    """Make the MLflow client of this process anonymous, or ``username``: it reads these variables
    at every request."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if username is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)


def refused(call) -> MlflowException:
    with pytest.raises(MlflowException) as raised:
        call()
    return raised.value


def http_status(url: str, authorization: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def basic(username: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()


@pytest.mark.parametrize(
    "admin_password, flows_password, named",
    [
        (None, "a-good-flows-password", "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
        ("password1234", "a-good-flows-password", "MLFLOW_AUTH_ADMIN_PASSWORD is the default"),
        ("a-good-admin-password", None, "MLFLOW_TRACKING_PASSWORD is not set"),
        ("a-good-admin-password", "too-short", "MLFLOW_TRACKING_PASSWORD is shorter than 12"),
    ],
)
def test_the_command_refuses_to_start_without_safe_credentials(tmp_path, admin_password, flows_password, named):
    env = clean_env(MLFLOW_TRACKING_USERNAME=FLOWS)
    env |= {"MLFLOW_AUTH_ADMIN_PASSWORD": admin_password} if admin_password else {}
    env |= {"MLFLOW_TRACKING_PASSWORD": flows_password} if flows_password else {}
    command = [sys.executable, "-m", "flows", "servers", "--mlflow-auth", "--state-dir", str(tmp_path / "servers")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr
    assert not (tmp_path / "servers").exists(), "a server started before the credentials were checked"
    for secret in filter(None, (admin_password, flows_password)):
        assert secret not in done.stdout + done.stderr, "the command printed a password"


def test_make_servers_mlflow_auth_runs_the_command_with_auth():
    with_auth = subprocess.run(["make", "-n", "servers", "MLFLOW_AUTH=1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    without = subprocess.run(["make", "-n", "servers"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert with_auth.returncode == 0 and without.returncode == 0, with_auth.stderr + without.stderr
    command = " ".join(with_auth.stdout.replace("\\\n", " ").split())
    assert "freshrec servers" in command and "--mlflow-auth" in command, command
    assert "--mlflow-auth" not in without.stdout


def test_anonymous_requests_are_refused(auth_servers, settings, monkeypatch):
    login(monkeypatch)
    client = MlflowClient(auth_servers.url, registry_uri=auth_servers.url)
    name = settings.registered_model_name
    for what, call in [
        ("read", lambda: client.search_experiments()),
        ("create a registered model", lambda: client.create_registered_model(name)),
        ("set an alias", lambda: client.set_registered_model_alias(name, settings.champion_alias, "1")),
    ]:
        error = refused(call)
        assert "401" in str(error) or error.error_code == "UNAUTHENTICATED", f"anonymous {what}: {error}"
    search = f"{auth_servers.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(search, basic(FLOWS, "not-the-password")) == 401
    assert http_status(search, basic(FLOWS, auth_servers.passwords[FLOWS])) == 200
    assert http_status(f"{auth_servers.url}/health") == 200  # what the command and load balancers poll


def test_the_flows_register_the_champion_and_only_they_move_it(auth_servers, prefect_server, tmp_path, monkeypatch):
    url, passwords = auth_servers.url, auth_servers.passwords
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # restored on teardown: the server is gone after this module
    settings = Settings(home=tmp_path / "freshrec", mlflow_tracking_uri=url, **TINY_SHOP_SETTINGS)
    name, alias = settings.registered_model_name, settings.champion_alias
    # The registry named too: an earlier test of the session may have set the global registry URI.
    client = MlflowClient(url, registry_uri=url)

    # The real bootstrap, its credentials only in the environment, as a worker runs it.
    login(monkeypatch, FLOWS, passwords[FLOWS])
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    state = bootstrap(settings, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()[-1].champion_version == "1"
    assert str(client.get_model_version_by_alias(name, alias).version) == "1"
    v1 = client.get_model_version(name, "1")
    # Another version by the flows' user, for the alias to move to.
    v2 = mlflow.register_model(v1.source, name)
    assert str(v2.version) == "2"

    # The flows' run logs (in Prefect) name no password either.
    APILogHandler().flush()  # the logs are sent in batches, in the background
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert logs, "the bootstrap's run logs were not found"
    assert not [log.message for log in logs if passwords[FLOWS] in log.message], "a flow run log names the flows' password"

    # A reader, created by the admin with MLflow's user API.
    login(monkeypatch, ADMIN, passwords[ADMIN])
    users = get_app_client("basic-auth", tracking_uri=url)
    passwords[READER] = password("reader")
    users.create_user(READER, passwords[READER])
    # The creator of the registered model holds MANAGE on it; a user MLflow made holds the default, READ.
    assert users.get_user_permission(FLOWS, "registered_model", name).permission == "MANAGE"
    assert users.get_user_permission(READER, "registered_model", name).permission == "READ"

    login(monkeypatch, READER, passwords[READER])
    assert str(client.get_model_version_by_alias(name, alias).version) == "1"  # readers read
    for what, call in [
        ("move the champion", lambda: client.set_registered_model_alias(name, alias, "2")),
        ("delete the champion alias", lambda: client.delete_registered_model_alias(name, alias)),
        ("register a version", lambda: mlflow.register_model(v1.source, name)),
    ]:
        error = refused(call)
        assert "403" in str(error) or error.error_code == "PERMISSION_DENIED", f"the reader could {what}: {error}"

    login(monkeypatch)
    error = refused(lambda: client.set_registered_model_alias(name, alias, "2"))
    assert "401" in str(error) or error.error_code == "UNAUTHENTICATED", f"anonymous move of the champion: {error}"

    login(monkeypatch, FLOWS, passwords[FLOWS])
    assert str(client.get_model_version_by_alias(name, alias).version) == "1", "a refused request moved the champion"
    client.set_registered_model_alias(name, alias, "2")
    assert str(client.get_model_version_by_alias(name, alias).version) == "2"
    assert len(client.search_model_versions(f"name = '{name}'")) == 2


def test_no_password_on_disk_or_in_a_log(auth_servers):
    auth_servers.stop()
    console = auth_servers.console.read_text(errors="replace")
    assert auth_servers.process.returncode == 0 and "Both servers stopped." in console, console[-3000:]
    assert f"the flows' user '{FLOWS}' created" in console

    state = auth_servers.state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    ini = state / "mlflow-auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert "default_permission = READ" in ini.read_text()
    assert f"database_uri = sqlite:///{(state / 'mlflow-auth.db').resolve()}" in ini.read_text()
    server_log = state / "logs" / "mlflow-server.log"
    assert "users/create" in server_log.read_text(errors="replace"), "the MLflow log holds none of the requests"

    # The user database holds hashes: no plain password, and the users this module made.
    with sqlite3.connect(state / "mlflow-auth.db") as db:
        users = dict(db.execute("SELECT username, password_hash FROM users").fetchall())
    assert set(auth_servers.passwords) <= set(users), users.keys()
    for user, secret in auth_servers.passwords.items():
        assert secret not in users[user]

    files = [p for p in state.rglob("*") if p.is_file()] + [auth_servers.console]
    assert {server_log, state / "logs" / "prefect-server.log", ini} <= set(files)
    for path in files:
        data = path.read_bytes()
        for user, secret in auth_servers.passwords.items():
            for form, text in (("password", secret), ("Basic credentials", basic(user, secret).split()[1])):
                assert text.encode() not in data, f"{user}'s {form} is in {path}"
