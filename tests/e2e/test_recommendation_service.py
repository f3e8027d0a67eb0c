"""The recommendation service (`python -m flows serve`) following the champion of a real MLflow
store (SQLite, as the flows write it), in its own process on a loopback port.

Risks guarded: a service that keeps answering with the version it started with after a promotion
or a rollback (what `mlflow models serve` does: it resolves the alias once); a request dropped or
failed while versions swap; a version that cannot load taking the answering one down; an answer
that does not say which version produced it, or that differs from the registered pyfunc's; input
that knocks the service over, is read whole however large, or is echoed back to the client.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow import MlflowClient

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import bootstrap
from flows.rollback import rollback
from models.settings import Settings
from flows.validate_landing import validate_landing
from tasks.registry import register
from tasks.tracking import load_champion, tracking_store
from tests.conftest import CHILD_ENV, TINY_SHOP, TINY_SHOP_SETTINGS, free_port
from tests.e2e.test_registry import challenger_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
POLL_SECONDS = 0.5


@dataclass
class Answer:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Service:
    port: int
    process: subprocess.Popen
    settings: Settings
    user: str  # a user the model knows
    before: Answer  # /healthz before any champion existed
    log: Path

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None, timeout: float = 30) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            raw = response.read()
            return Answer(response.status, json.loads(raw) if raw else {}, {k.lower(): v for k, v in response.getheaders()})
        finally:
            connection.close()

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def version(self) -> str | None:
        return self.get("/version").body.get("model_version")

    def wait_for_version(self, version: str, timeout: float = 60) -> float:
        """Seconds until /version names ``version``."""
        started = time.monotonic()
        while self.version() != version:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() - started < timeout, f"still {self.get('/version').body} after {timeout} s"
            time.sleep(0.1)
        return time.monotonic() - started


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_service(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, int]:
    """`python -m flows serve` on a free loopback port, in its own process group."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows", "serve", "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, port


@pytest.fixture(scope="module")
def service(tmp_path_factory, prefect_server):
    """The service started on an empty store; then weeks 0-1 land and a bootstrap registers
    version 1; weeks 2-3 land and are validated (a challenger's data)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    settings = Settings(home=tmp_path_factory.mktemp("service") / "freshrec", **TINY_SHOP_SETTINGS)
    settings.home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"} | CHILD_ENV
    env |= {"FRESHREC_HOME": str(settings.home), "FRESHREC_SERVE_POLL_SECONDS": str(POLL_SECONDS)}
    log = settings.home / "serve.log"
    process, port = start_service(env, log)
    try:
        service = Service(port, process, settings, "", Answer(0, {}), log)
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                service.before = service.get("/healthz")
                if service.before.status == 503 and "no version" in service.before.body["error"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the service did not answer /healthz in 120 s"
            time.sleep(0.5)
        write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
        state = bootstrap(settings, return_state=True)
        assert state.is_completed(), state.message
        week = pd.read_parquet(next(settings.accepted_dir.glob("*-interactions-week000.parquet")))
        service.user = str(week["user_id"].iloc[0])
        service.wait_for_version("1")
        write_weeks(settings.landing_dir, range(2, 4), config=TINY_SHOP)
        validate_landing(settings)
        yield service
    finally:
        stop_group(process)


def test_before_any_champion_the_service_says_it_has_none(service):
    assert service.before.status == 503
    assert "no version of ecommerce-recommender has the alias @champion yet" in service.before.body["error"]
    assert service.before.headers["retry-after"] == "1"


def test_answers_name_their_version_and_match_the_registered_model(service):
    answer = service.get(f"/recommendations/{service.user}?k=5")
    assert answer.status == 200, answer.body
    assert answer.body["model_version"] == answer.headers["x-model-version"] == "1"
    assert answer.body["user_id"] == service.user and answer.body["known_user"] is True
    scores = [item["score"] for item in answer.body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)

    # The same lists as the registered pyfunc's predict (what `mlflow models serve` answers).
    with tracking_store(service.settings):  # freshrec leaves no store behind as MLflow's default
        model = mlflow.pyfunc.load_model("models:/ecommerce-recommender/1")
    predicted = model.predict(pd.DataFrame({"user_id": [service.user, "never-seen-visitor"], "k": [5, 5]}))
    for user_id, body in ((service.user, answer.body), ("never-seen-visitor", service.get("/recommendations/never-seen-visitor?k=5").body)):
        expected = predicted[predicted["user_id"] == user_id]
        assert [item["item_id"] for item in body["items"]] == expected["item_id"].tolist()
        assert [item["score"] for item in body["items"]] == pytest.approx(expected["score"].tolist(), rel=1e-5)
    assert service.get("/recommendations/never-seen-visitor").body["known_user"] is False
    assert len(service.get("/recommendations/never-seen-visitor").body["items"]) == 10  # the default k

    version = service.get("/version").body
    assert version["model_version"] == "1" and version["alias"] == "champion" and version["last_error"] is None
    assert version["run_id"] == MlflowClient(service.settings.mlflow_tracking_uri).get_model_version("ecommerce-recommender", "1").run_id
    assert version["serving_since"] and version["max_k"] == 100 and version["max_request_rows"] == 1000
    assert service.get("/healthz").body == {"status": "ok", "model_version": "1"}


def test_a_batch_answers_each_user_in_order_as_single_requests_do(service):
    numeric = next(u for u in pd.read_parquet(next(service.settings.accepted_dir.glob("*-interactions-week001.parquet")))["user_id"].astype(str) if u.isdigit())
    answer = service.request("POST", "/recommendations", {"user_ids": [service.user, int(numeric), "never-seen-visitor", service.user], "k": 3})
    assert answer.status == 200, answer.body
    assert answer.body["model_version"] == "1"
    lists = answer.body["recommendations"]
    assert [entry["user_id"] for entry in lists] == [service.user, numeric, "never-seen-visitor", service.user]
    for entry in lists:
        single = service.get(f"/recommendations/{entry['user_id']}?k=3").body
        assert [i["item_id"] for i in entry["items"]] == [i["item_id"] for i in single["items"]]
        # Scores to float32 rounding: a batch multiplies its users' vectors in one product.
        assert [i["score"] for i in entry["items"]] == pytest.approx([i["score"] for i in single["items"]], rel=1e-5)
        assert entry["known_user"] == single["known_user"]


@pytest.mark.parametrize(
    "method, path, body, status, phrase",
    [
        ("GET", "/recommendations/{user}?k=0", None, 400, "k must be a whole number from 1 to 100"),
        ("GET", "/recommendations/{user}?k=101", None, 400, "max_k of version 1"),
        ("GET", "/recommendations/{user}?k=ten", None, 422, "query.k"),
        ("GET", "/recommendations/" + "u" * 300, None, 422, "at most 256 characters"),
        ("POST", "/recommendations", {"user_ids": []}, 422, "at least 1 item"),
        ("POST", "/recommendations", {"user_ids": "SECRET-INPUT-MARKER"}, 422, "body.user_ids"),
        ("POST", "/recommendations", {"user_ids": ["a"], "admin": True}, 422, "body.admin: Extra inputs are not permitted"),
        ("POST", "/recommendations", {"user_ids": ["a", None]}, 400, "user_ids[1] has None"),
        ("POST", "/recommendations", {"user_ids": ["a", 2.5]}, 400, "user_ids[1] has 2.5"),
        ("POST", "/recommendations", {"user_ids": ["a"], "k": True}, 400, "k must be a whole number"),
        ("POST", "/recommendations", {"user_ids": [f"v{i}" for i in range(1001)]}, 400, "at most 1000 users (max_request_rows of version 1), got 1001"),
        ("POST", "/recommendations", b'{"user_ids": ["a"', 422, "JSON decode error"),
        ("POST", "/recommendations", b'{"user_ids": ["' + b"a" * 2_000_000 + b'"]}', 413, "larger than 1048576 bytes"),
    ],
)
def test_bad_requests_get_a_clear_4xx_and_the_service_keeps_serving(service, method, path, body, status, phrase):
    answer = service.request(method, path.format(user=service.user), body)
    assert answer.status == status, answer.body
    assert phrase in answer.body["error"], answer.body
    assert "SECRET-INPUT-MARKER" not in json.dumps(answer.body)  # a rule and a place, never the input
    assert len(answer.body["error"]) <= 1000
    assert service.get(f"/recommendations/{service.user}?k=2").status == 200


def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_whole(service):
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    connection.putrequest("POST", "/recommendations")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    chunk = b"a" * 65_536
    try:
        for _ in range(64):  # 4 MB offered, in chunks, no Content-Length
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):  # the server answered and closed first
        pass
    response = connection.getresponse()
    assert response.status == 413 and "larger than 1048576 bytes" in json.loads(response.read())["error"]
    connection.close()
    assert service.get(f"/recommendations/{service.user}?k=2").status == 200


def test_an_id_with_markup_or_a_slash_comes_back_as_json_text(service):
    answer = service.get("/recommendations/%3Cscript%3Ealert(1)%3C%2Fscript%3E?k=1")
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    assert answer.body["user_id"] == "<script>alert(1)</script>" and answer.body["known_user"] is False
    assert service.get("/recommendations/shop/42?k=1").body["user_id"] == "shop/42"
    missing = service.get("/no-such-endpoint")
    assert missing.status == 404 and missing.body["error"] == "Not Found"


class Load:
    """``clients`` threads, each sending ``requests`` GET requests (``paths`` in turn) on its own
    keep-alive connection, ``pause`` seconds apart, and recording every answer's status and
    version: at most a fixed count, ending by itself or, sooner, at ``stop``."""

    def __init__(self, port: int, paths: list[str], clients: int, requests: int, pause: float) -> None:
        self.port, self.paths, self.requests, self.pause = port, paths, requests, pause
        self.answers: list[list[tuple[int, str | None]]] = [[] for _ in range(clients)]
        self.times: list[list[float]] = [[] for _ in range(clients)]  # when each answer came (epoch seconds)
        self.errors: list[str] = []
        self.sent = [0] * clients  # requests each client sent: each must have its answer
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for n in range(self.requests):
            if self.stopping.is_set():
                break
            self.sent[i] += 1
            try:
                connection.request("GET", self.paths[n % len(self.paths)])
                response = connection.getresponse()
                body = json.loads(response.read())
                version = body.get("model_version")
                if response.getheader("X-Model-Version") != version or (response.status == 200 and not body["items"]):
                    self.errors.append(f"client {i} request {n}: an answer unlike the others: {body}")
                self.answers[i].append((response.status, version))
                self.times[i].append(time.time())
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.errors.append(f"client {i} request {n}: {type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            time.sleep(self.pause)
        connection.close()

    def first_answer_from(self, version: str) -> float | None:
        """When (epoch seconds) the first answer from ``version`` came, or None."""
        times = [t for answers, stamps in zip(self.answers, self.times) for (_, v), t in zip(answers, stamps) if v == version]
        return min(times) if times else None

    def versions_per_client(self) -> list[list[str | None]]:
        return [[version for _, version in answers] for answers in self.answers]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def answered(self) -> int:
        return sum(len(a) for a in self.answers)

    def stop(self, timeout: float) -> None:
        """No new request after the ones in flight; wait for those."""
        self.stopping.set()
        self.join(timeout)

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a load client did not finish"


def test_the_service_follows_a_promotion_and_a_rollback_under_load_without_losing_a_request(service):
    settings = service.settings
    champion = load_champion.fn(settings)
    run_id, uri, data, tags = challenger_run(settings, champion, seed=1)  # trained before the load starts

    paths = [f"/recommendations/{service.user}?k=5", "/recommendations/never-seen-visitor?k=5"]
    load = Load(service.port, paths, clients=4, requests=1500, pause=0.01)
    load.start()
    while load.answered() < 200:
        time.sleep(0.05)
    registration = register(settings, run_id, uri, champion, tags, data.batch_ids)
    assert registration.version == "2", registration.reason
    promoted_after = service.wait_for_version("2")
    answered_at_promotion = load.answered()

    state = rollback("the new version's lists look wrong", settings=settings, return_state=True)
    assert state.is_completed(), state.message
    rolled_back_after = service.wait_for_version("1")
    answered_at_rollback = load.answered()
    load.join(timeout=300)

    print(f"\nswapped to version 2 {promoted_after:.2f} s after its registration, back to 1 {rolled_back_after:.2f} s after the rollback; "
          f"{load.answered()} answers ({answered_at_promotion} by the promotion's swap, {answered_at_rollback} by the rollback's)")
    assert not load.errors, load.errors[:5]
    assert [len(answers) for answers in load.answers] == [1500] * 4  # none lost
    assert all(status == 200 for answers in load.answers for status, _ in answers)
    versions = [version for answers in load.answers for _, version in answers]
    assert versions.count("2") > 0 and answered_at_rollback < load.answered()  # the load spanned both swaps
    for sequence in load.versions_per_client():  # each client saw 1, then 2, then 1 again, in that order
        changes = [(a, b) for a, b in zip(sequence, sequence[1:]) if a != b]
        assert sequence[0] == "1" and sequence[-1] == "1" and changes in ([("1", "2"), ("2", "1")], []), changes
    # Within one poll period and the new version's load (a tiny model loads in about a second).
    assert promoted_after < POLL_SECONDS + 10 and rolled_back_after < POLL_SECONDS + 10


def test_a_signed_mlflow_webhook_makes_the_service_check_at_once_and_a_forged_one_is_refused(service):
    """A service that polls once an hour follows a move within seconds of MLflow's webhook (a
    delivery signed as MLflow's server signs it); an unsigned or wrongly signed one changes nothing."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    secret = "webhook-secret-for-the-test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k != "MLFLOW_TRACKING_URI"} | CHILD_ENV
    env |= {"FRESHREC_HOME": str(service.settings.home), "FRESHREC_SERVE_POLL_SECONDS": "3600", "FRESHREC_SERVE_WEBHOOK_SECRET": secret}
    log = service.settings.home / "serve-webhook.log"
    process, port = start_service(env, log)
    hooked = Service(port, process, service.settings, service.user, Answer(0, {}), log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if hooked.version() == "1":
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        state = rollback("forward again to version 2", to_version="2", settings=service.settings, return_state=True)
        assert state.is_completed(), state.message

        body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": "ecommerce-recommender", "alias": "champion", "version": "2"}})
        stamp = str(int(time.time()))
        signed = {"X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": stamp, "X-MLflow-Signature": _generate_hmac_signature(secret, "d-1", stamp, body)}
        forged = signed | {"X-MLflow-Signature": _generate_hmac_signature("a-guess", "d-1", stamp, body)}
        for headers in ({}, forged):
            refused = hooked.request("POST", "/webhooks/mlflow", body.encode(), headers)
            assert refused.status == 401, refused.body
        time.sleep(2)
        assert hooked.version() == "1"  # nothing checked the registry
        accepted = hooked.request("POST", "/webhooks/mlflow", body.encode(), signed)
        assert accepted.status == 200, accepted.body
        assert hooked.wait_for_version("2", timeout=15) < 15
        # Without a secret, the endpoint does not exist.
        assert service.request("POST", "/webhooks/mlflow", body.encode(), signed).status == 404
    finally:
        stop_group(process)
        state = rollback("back to version 1 for the next test", to_version="1", settings=service.settings, return_state=True)
        assert state.is_completed(), state.message
    service.wait_for_version("1")


def test_a_version_that_cannot_load_leaves_the_current_one_answering(service, tmp_path):
    client = MlflowClient(service.settings.mlflow_tracking_uri)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    broken = client.create_model_version("ecommerce-recommender", source=str(empty), run_id=None)
    client.set_registered_model_alias("ecommerce-recommender", "champion", broken.version)
    try:
        deadline = time.monotonic() + 60
        while f"version {broken.version} of ecommerce-recommender (@champion) did not load" not in (service.get("/version").body["last_error"] or ""):
            assert time.monotonic() < deadline, service.get("/version").body
            time.sleep(0.2)
        status = service.get("/version").body
        assert status["model_version"] == "1" and "version 1 keeps answering" in status["last_error"]
        answer = service.get(f"/recommendations/{service.user}?k=3")
        assert answer.status == 200 and answer.body["model_version"] == "1"
        assert service.get("/healthz").status == 200
    finally:
        client.set_registered_model_alias("ecommerce-recommender", "champion", "1")
    deadline = time.monotonic() + 30
    while service.get("/version").body["last_error"] is not None:
        assert time.monotonic() < deadline, service.get("/version").body
        time.sleep(0.2)
    assert service.process.poll() is None
