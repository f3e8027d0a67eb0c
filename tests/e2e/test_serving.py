"""The champion behind `mlflow models serve`, asked over HTTP what users and attackers ask.

Risks guarded: one request that keeps the server busy for minutes and takes gigabytes (the
server's timeout answers 504 while the work goes on in a thread), a request format the docs
promise that the signature refuses (k left out, a numeric user id), and an error a client cannot
act on. Every hostile request ends with a normal one, which must still answer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import bootstrap
from models.settings import Settings
from tests.conftest import TINY_SHOP, TINY_SHOP_SETTINGS, free_port

pytestmark = pytest.mark.slow
MB = 2**20


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    settings: Settings
    user: str  # a user the model knows, as text (the model's ids are strings)


@dataclass
class Answer:
    status: int
    body: dict
    seconds: float


def post(served: Served, payload: dict | bytes, timeout: float = 60) -> Answer:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(f"{served.url}/invocations", data=data, headers={"Content-Type": "application/json"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    seconds = time.monotonic() - start
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"message": raw.decode(errors="replace")}
    return Answer(status, body, seconds)


def split(rows: list[list], columns=("user_id", "k")) -> dict:
    return {"dataframe_split": {"columns": list(columns), "data": rows}}


def lists(answer: Answer) -> dict[str, list[str]]:
    assert answer.status == 200, answer.body
    by_user: dict[str, list[str]] = {}
    for row in answer.body["predictions"]:
        by_user.setdefault(row["user_id"], []).append(row["item_id"])
    return by_user


def memory_kb(process: subprocess.Popen, field: str) -> int:
    """``field`` (VmRSS now, VmHWM its peak) summed over the server's process group: the
    `mlflow models serve` command and the uvicorn process it starts."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != process.pid:  # field 5: the process group
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):  # the process ended while we read
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith(f"{field}:")), 0)
    return total


def assert_still_serves(served: Served) -> None:
    by_user = lists(post(served, split([[served.user, 3]]), timeout=30))
    assert list(by_user) == [served.user] and len(by_user[served.user]) == 3


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:  # already gone
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server):
    """A champion bootstrapped on a tiny shop with the default serving limits (max_k 100,
    max_request_rows 1000), served by `mlflow models serve` on a free loopback port."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    settings = Settings(home=tmp_path_factory.mktemp("serving") / "freshrec", **TINY_SHOP_SETTINGS)
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    state = bootstrap(settings, return_state=True)
    assert state.is_completed(), state.message
    week = pd.read_parquet(next(settings.accepted_dir.glob("*-interactions-week000.parquet")))
    user = str(next(u for u in week["user_id"] if str(u).isdigit()))  # numeric-looking, as Online Retail's are

    port = free_port()
    # The server execs `uvicorn` from PATH: the environment's bin directory goes first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri, "PATH": path}
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{settings.registered_model_name}@champion",
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    log_path = settings.home / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 180 s"
            time.sleep(1)
        yield Served(f"http://127.0.0.1:{port}", process, settings, user)
    finally:
        stop_group(process)


def test_a_request_without_k_gets_ten_items_per_user(served):
    answer = post(served, split([[served.user], ["never-seen-visitor"]], columns=["user_id"]))
    assert {user: len(items) for user, items in lists(answer).items()} == {served.user: 10, "never-seen-visitor": 10}
    # A null k is the default too, beside rows that set their own.
    answer = post(served, split([[served.user, None], ["never-seen-visitor", 4]]))
    assert {user: len(items) for user, items in lists(answer).items()} == {served.user: 10, "never-seen-visitor": 4}
    print(f"\nnormal request (2 users): {answer.seconds * 1000:.0f} ms")


def test_each_list_is_ranked_by_score_and_a_new_visitor_gets_one_too(served):
    answer = post(served, split([[served.user, 5], ["never-seen-visitor", 3]]))
    assert answer.status == 200, answer.body
    by_user: dict[str, list[dict]] = {}
    for row in answer.body["predictions"]:
        by_user.setdefault(row["user_id"], []).append(row)
    assert {user: len(rows) for user, rows in by_user.items()} == {served.user: 5, "never-seen-visitor": 3}
    for rows in by_user.values():
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True) and all(r["item_id"] for r in rows)


def test_numeric_and_text_user_ids_get_the_same_answer(served):
    as_text = lists(post(served, split([[served.user, 5]])))
    assert lists(post(served, split([[int(served.user), 5]]))) == as_text
    # A float id (a spreadsheet's 17850.0, or a JSON column with gaps) is the same user.
    assert lists(post(served, split([[float(served.user), 5]]))) == as_text
    records = {"dataframe_records": [{"user_id": int(served.user), "k": 5}]}
    assert lists(post(served, records)) == as_text
    assert as_text[served.user] != lists(post(served, split([["never-seen-visitor", 5]])))["never-seen-visitor"]


def test_k_above_max_k_is_refused_with_the_limit_named(served):
    answer = post(served, split([[served.user, 101]]))
    assert answer.status == 400, answer.body
    assert answer.body["error_code"] == "INVALID_PARAMETER_VALUE"
    message = answer.body["message"]
    assert "max_k" in message and "100" in message and "FRESHREC_MAX_K" in message and "101" in message
    assert lists(post(served, split([[served.user, 100]])))[served.user]  # the limit itself is allowed
    assert_still_serves(served)


def test_an_oversized_request_is_refused_at_once_and_the_largest_allowed_one_answers(served):
    rows = [[f"visitor-{i}", 1000] for i in range(20_000)]
    before_rss, before_peak = memory_kb(served.process, "VmRSS"), memory_kb(served.process, "VmHWM")
    answer = post(served, split(rows), timeout=10)
    after_rss, after_peak = memory_kb(served.process, "VmRSS"), memory_kb(served.process, "VmHWM")
    print(
        f"\n20,000 rows x k=1000: {answer.status} in {answer.seconds:.2f} s; server RSS {before_rss / 1024:.0f} -> "
        f"{after_rss / 1024:.0f} MB, peak {before_peak / 1024:.0f} -> {after_peak / 1024:.0f} MB"
    )
    assert answer.status == 400, answer.body
    assert "max_request_rows" in answer.body["message"] and "20000" in answer.body["message"]
    assert answer.seconds < 2
    assert (after_peak - before_peak) * 1024 < 200 * MB and (after_rss - before_rss) * 1024 < 200 * MB

    # max_request_rows users, each asking for max_k items (the tiny catalog holds 150).
    rows = [[served.user if i % 2 else f"visitor-{i}", 100] for i in range(1000)]
    answer = post(served, split(rows))
    growth = (memory_kb(served.process, "VmHWM") - after_peak) / 1024
    print(f"1,000 rows x k=100: {answer.status} in {answer.seconds:.2f} s, peak RSS +{growth:.0f} MB")
    assert answer.status == 200 and len(answer.body["predictions"]) == 100_000
    assert growth < 200
    assert_still_serves(served)


def test_bad_requests_get_a_clear_4xx(served):
    cases = [
        (split([["a", 1]], columns=["customer", "k"]), "user_id"),
        (split([[served.user, 3], [None, 3]]), "user_id"),
        (split([[served.user, 2.5]]), "whole number"),
        (split([[served.user, "ten"]]), "whole number"),
        (split([[served.user, 0]]), "max_k"),
        (split([[{"id": 1}, 3]]), "user_id"),
        (b'{"dataframe_split": {"columns": ["user_id"], "data": [["a"]', "JSON"),
    ]
    for payload, phrase in cases:
        answer = post(served, payload)
        assert answer.status == 400, (payload, answer.body)
        assert phrase in answer.body["message"], (payload, answer.body["message"][-500:])
    assert_still_serves(served)


def test_a_50_mb_body_is_refused_and_the_server_keeps_serving(served):
    # `mlflow models serve` reads and parses any body (no size limit): the model refuses it on
    # its row count once parsed. Bounded here in time; the figures are printed.
    row = json.dumps([served.user])
    count = 50 * MB // (len(row) + 1)
    body = ('{"dataframe_split": {"columns": ["user_id"], "data": [' + ",".join([row] * count) + "]}}").encode()
    before_peak = memory_kb(served.process, "VmHWM")
    answer = post(served, body, timeout=120)
    growth = (memory_kb(served.process, "VmHWM") - before_peak) / 1024
    print(f"\n{len(body) / MB:.0f} MB body ({count:,} rows): {answer.status} in {answer.seconds:.1f} s, peak RSS +{growth:.0f} MB")
    assert answer.status == 400 and "max_request_rows" in answer.body["message"], answer.body
    assert answer.seconds < 60
    assert_still_serves(served)
