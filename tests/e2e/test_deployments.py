"""freshrec as users run it: real servers, `prefect deploy`, a process worker, triggered runs.

Starts `prefect server start` and `mlflow server` (SQLite backend, local artifact root) on free
loopback ports, each in its own process group, deploys prefect.yaml and starts a process worker
(once for the module). Then: the bootstrap deployment, run with `prefect deployment run`, gives
a champion (MLflow's REST API) and a report artifact (Prefect's API); two continuous-training
deployment runs at once wait for each other (`concurrency_limit: 1`); two continuous-training
runs started by hand at once, past that limit, promote at most once and leave the ledger
consistent; batches landed with `python -m flows land` start continuous-training runs through
the deployment's trigger, and docs/automations/notify-on-promotion.yaml tells a webhook on
loopback about the batch rejected; the recommendation service, running, answers with the version
a triggered run promoted and follows the rollback deployment, with a load running through both
swaps. Every process the module started is stopped, whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from data_checks.sources.synthetic import write_weeks
from flows.servers import Server, start_mlflow, start_prefect, stop, wait_ready
from tasks import ledger
from tests.conftest import CHILD_ENV, TINY_SHOP, free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LANDED_AUTOMATION = "continuous-training-when-a-batch-lands"  # prefect.yaml's trigger
SERVE_POLL_SECONDS = 1.0  # the recommendation service's check of the alias



def get_json(url: str, body: dict | None = None) -> dict:
    """One API call. A 503 is asked again, as Prefect's own client does (its server answers 503
    while its SQLite database is locked by another writer)."""
    for attempt in range(6):
        request = urllib.request.Request(
            url, data=json.dumps(body).encode() if body is not None else None, headers={"Content-Type": "application/json"},
            method="POST" if body is not None else "GET",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == 5:
                raise
        time.sleep(1 + attempt)


@dataclass
class Deployed:
    prefect_api: str
    mlflow_uri: str
    home: Path  # the worker's FRESHREC_HOME
    env: dict[str, str]  # what the worker runs with
    logs: Path

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def run_deployment(self, name: str) -> str:
        started = self.prefect("deployment", "run", name)
        return next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)

    def wait(self, run_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = get_json(f"{self.prefect_api}/flow_runs/{run_id}")
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                assert run["state"]["type"] == "COMPLETED", (run["state"], (self.logs / "worker.log").read_text()[-4000:])
                return run
            assert time.monotonic() < deadline, f"flow run {run_id} is still {run['state']['type']} after {timeout} s"
            time.sleep(3)

    def champion(self) -> str:
        model = urllib.parse.quote("ecommerce-recommender")
        url = f"{self.mlflow_uri}/api/2.0/mlflow/registered-models/alias?name={model}&alias=champion"
        return get_json(url)["model_version"]["version"]

    def versions(self) -> list[str]:
        found = get_json(f"{self.mlflow_uri}/api/2.0/mlflow/model-versions/search?filter=name%3D%27ecommerce-recommender%27")
        return sorted((v["version"] for v in found.get("model_versions", [])), key=int)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Both servers, every deployment of prefect.yaml, and a process worker, for the module."""
    tmp = tmp_path_factory.mktemp("deployed")
    home = tmp / "freshrec"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_") and k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")} | CHILD_ENV
    started: list[Server] = []
    try:
        prefect = start_prefect(tmp / "servers", free_port())
        started.append(prefect)
        mlflow = start_mlflow(tmp / "servers", free_port())
        started.append(mlflow)
        for server in started:
            wait_ready(server, timeout=180)
        env |= {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_API_URL": prefect.url,
            "PREFECT_HOME": str(tmp / "prefect-client"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The worker asks for scheduled runs every 2 s, not every 10 s: a run starts soon after
            # it is created, as the tests wait for it.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "MLFLOW_TRACKING_URI": mlflow.url,
            "FRESHREC_HOME": str(home),
            "FRESHREC_MIN_NEW_ROWS": "500",
            "FRESHREC_LANDING_SETTLE_SECONDS": "0",  # the test writes whole files
            "FRESHREC_SCRATCH_EPOCHS": "3",
            "FRESHREC_FINETUNE_EPOCHS": "2",
            # A tiny shop's week (about 2.5k rows) is enough new data to update on.
            "FRESHREC_VOLUME_THRESHOLD_ROWS": "2000",
            # Every update that trains promotes (no gain needed, no forgetting check), so the
            # service's test sees a triggered promotion; the gate itself is tested elsewhere.
            "FRESHREC_MIN_IMPROVEMENT": "-1",
            "FRESHREC_MAX_FORGETTING": "1",
        }
        deployed = Deployed(prefect.url, mlflow.url, home, env, tmp / "servers" / "logs")
        deployed.prefect("work-pool", "create", "freshrec-process", "--type", "process", "--overwrite")
        deployed.prefect("--no-prompt", "deploy", "--all")
        with open(deployed.logs / "worker.log", "w") as worker_log:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "freshrec-process"], cwd=REPO, env=env,
                stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        started.append(Server("worker", "", "", worker, deployed.logs / "worker.log"))
        yield deployed
    finally:
        for server in reversed(started):
            stop(server)


def moves_and_batches(home: Path) -> tuple[list[ledger.AliasMove], list[ledger.BatchRecord]]:
    engine = ledger.connect(f"sqlite:///{home / 'ledger.db'}")
    return ledger.moves(engine, "ecommerce-recommender"), ledger.all_batches(engine)


def assert_ledger_consistent(deployed: Deployed) -> None:
    """One record per landed file, every row accounted for, the alias moves a chain that ends at
    the registry's champion, and no registered version left that never became champion."""
    moves, batches = moves_and_batches(deployed.home)
    assert sorted(b.file_name for b in batches) == sorted(p.name for p in (deployed.home / "landing").iterdir())
    assert all(b.rows_in == b.rows_accepted + b.rows_quarantined for b in batches)
    assert [m.seq for m in moves] == list(range(1, len(moves) + 1))
    assert all(later.from_version == earlier.to_version for earlier, later in zip(moves, moves[1:]))
    assert moves[-1].to_version == deployed.champion()
    assert deployed.versions() == sorted({m.to_version for m in moves}, key=int)


def test_prefect_yaml_deploys_every_flow_with_a_form(deployed):
    deployments = {d["name"]: d for d in get_json(f"{deployed.prefect_api}/deployments/filter", {})}
    assert set(deployments) == {"continuous-training", "bootstrap", "backtest", "rollback"}
    for deployment in deployments.values():
        assert deployment["enforce_parameter_schema"] and "freshrec" in deployment["tags"]
        assert deployment["work_pool_name"] == "freshrec-process" and deployment["description"]
        schema = deployment["parameter_openapi_schema"]
        assert "settings" not in schema["properties"] and all(p.get("description") for p in schema["properties"].values())
        if deployment["name"] != "rollback":
            overrides = schema["definitions"]["RunOverrides"]
            assert overrides["additionalProperties"] is False and "home" not in overrides["properties"]
            assert "drift_share_threshold" in overrides["properties"]
    assert deployments["rollback"]["parameter_openapi_schema"]["required"] == ["reason"]
    assert deployments["backtest"]["parameters"] == {"source": "synthetic"}
    training = deployments["continuous-training"]
    assert training["global_concurrency_limit"]["limit"] == 1
    assert [s["schedule"]["cron"] for s in training["schedules"]] == ["0 3 * * *"]
    # The trigger: an automation the deployment owns, which runs it on each landed batch.
    (automation,) = get_json(f"{deployed.prefect_api}/automations/related-to/prefect.deployment.{training['id']}")
    assert automation["name"] == LANDED_AUTOMATION and automation["enabled"]
    trigger = automation["trigger"]
    assert (trigger["type"], trigger["posture"], trigger["threshold"]) == ("event", "Reactive", 1)
    assert trigger["expect"] == ["freshrec.batch.landed"] and trigger["match"] == {"prefect.resource.id": "freshrec.landing.*"}
    assert [(a["type"], a["deployment_id"]) for a in automation["actions"]] == [("run-deployment", training["id"])]
    for name in ("bootstrap", "backtest", "rollback"):  # run by hand only
        assert get_json(f"{deployed.prefect_api}/automations/related-to/prefect.deployment.{deployments[name]['id']}") == []


def test_a_run_cannot_set_what_is_not_allow_listed(deployed):
    """The server refuses overrides that name a path, a store or the Dask scheduler, or pass a
    bound; a parameter the flow does not have is refused by the worker: that run fails, having
    done nothing."""
    deployment = get_json(f"{deployed.prefect_api}/deployments/name/continuous-training/continuous-training")
    create = f"{deployed.prefect_api}/deployments/{deployment['id']}/create_flow_run"
    for overrides in ({"home": "/"}, {"dask_address": "tcp://203.0.113.7:8786"}, {"ledger_url": "sqlite:////tmp/elsewhere.db"}, {"batch_size": 10**9}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            get_json(create, {"parameters": {"overrides": overrides}})
        assert refused.value.code in (409, 422), overrides
    run_id = get_json(create, {"parameters": {"settings": {"home": str(deployed.home / "elsewhere")}}})["id"]
    deadline = time.monotonic() + 300
    while (run := get_json(f"{deployed.prefect_api}/flow_runs/{run_id}"))["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, run["state"]
        time.sleep(2)
    assert run["state"]["type"] in ("FAILED", "CRASHED"), run["state"]
    assert "but was provided with parameters ['settings']" in (deployed.logs / "worker.log").read_text()
    assert not (deployed.home / "elsewhere").exists()


def test_bootstrap_deployment_runs_on_a_process_worker(deployed):
    write_weeks(deployed.home / "landing", range(0, 2), config=TINY_SHOP)
    run_id = deployed.run_deployment("bootstrap/bootstrap")
    deployed.wait(run_id)
    assert deployed.champion() == "1"  # MLflow's REST API: the registered model has a champion
    # Prefect's API: the run published its report.
    artifacts = get_json(f"{deployed.prefect_api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert "freshrec-report" in {a["key"] for a in artifacts}
    assert_ledger_consistent(deployed)


def test_two_deployment_runs_at_once_take_turns(deployed):
    """The continuous-training deployment's concurrency_limit of 1: a second run waits for the first."""
    moves_before = len(moves_and_batches(deployed.home)[0])
    write_weeks(deployed.home / "landing", range(2, 3), config=TINY_SHOP)
    # Through the API, a moment apart, so one poll of the worker finds both.
    deployment = get_json(f"{deployed.prefect_api}/deployments/name/continuous-training/continuous-training")
    first, second = (get_json(f"{deployed.prefect_api}/deployments/{deployment['id']}/create_flow_run", {})["id"] for _ in range(2))
    runs = sorted((deployed.wait(first), deployed.wait(second)), key=lambda run: run["start_time"])
    assert runs[0]["end_time"] <= runs[1]["start_time"], "the two runs overlapped"
    states = [
        state["name"] for run in runs
        for state in get_json(f"{deployed.prefect_api}/flow_run_states/?flow_run_id={run['id']}")
    ]
    assert "AwaitingConcurrencySlot" in states
    moves, batches = moves_and_batches(deployed.home)
    assert len(moves) - moves_before <= 1  # one new batch: at most one promotion
    (week2,) = [b for b in batches if b.file_name == "interactions-week002.csv"]
    assert week2.decision == "trained"  # updated on, to the end (promoted or not)
    assert_ledger_consistent(deployed)


def test_two_runs_started_by_hand_at_once_promote_at_most_once(deployed):
    """Past the deployment's limit (two `python -m flows run` at once), the ledger's claims decide:
    each file is validated into one record, each batch decided and trained on by one run, and
    of two challengers for the same champion at most one is promoted."""
    moves_before = len(moves_and_batches(deployed.home)[0])
    write_weeks(deployed.home / "landing", range(3, 4), config=TINY_SHOP)
    command = [sys.executable, "-m", "flows", "run", "--json"]
    runs = [subprocess.Popen(command, cwd=REPO, env=deployed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    outcomes = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line.startswith("{")]
    week3 = [o for o in outcomes if o["batch"] == "interactions-week003.csv"]
    promoted = [o for o in week3 if o["promoted"]]
    assert len(promoted) <= 1
    for outcome in week3:
        # Whoever did not promote says why: the other run decided the batch, the gate, or the lost claim.
        assert outcome["promoted"] or outcome["reasons"], outcome
    moves, batches = moves_and_batches(deployed.home)
    assert len(moves) - moves_before == len(promoted)
    (record,) = [b for b in batches if b.file_name == "interactions-week003.csv"]
    assert record.decision == "trained"
    assert_ledger_consistent(deployed)


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """A webhook on loopback that keeps the JSON bodies posted to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # quiet: the test reports what it missed
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/notify", received
    finally:
        server.shutdown()
        server.server_close()


# docs/events.md's block, with a body the test can read back.
SAVE_WEBHOOK_BLOCK = """
from prefect.blocks.notifications import CustomWebhookNotificationBlock as Hook
print(Hook(name="freshrec-on-call", url="{url}", json_data={{"subject": "{{{{subject}}}}", "body": "{{{{body}}}}"}}).save("freshrec-on-call"))
"""


def triggered_runs(deployed: Deployed, deployment_id: str, automation_id: str) -> list[dict]:
    """The deployment's flow runs that its trigger's automation created (not a person, not the schedule)."""
    runs = get_json(f"{deployed.prefect_api}/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}})
    return [r for r in runs if (r.get("created_by") or {}).get("type") == "AUTOMATION" and r["created_by"]["id"] == automation_id]


def test_batches_landed_with_the_command_start_runs_and_a_rejected_one_notifies(deployed, tmp_path):
    """`python -m flows land` sends freshrec.batch.landed per file; the deployment's automation
    starts a continuous-training run per event, which nobody started by hand; the batch those runs
    reject reaches a person through docs/automations/notify-on-promotion.yaml."""
    training = get_json(f"{deployed.prefect_api}/deployments/name/continuous-training/continuous-training")
    (automation,) = get_json(f"{deployed.prefect_api}/automations/related-to/prefect.deployment.{training['id']}")
    assert triggered_runs(deployed, training["id"], automation["id"]) == []
    moves_before = len(moves_and_batches(deployed.home)[0])
    with webhook_receiver() as (url, received):
        saved = subprocess.run(
            [sys.executable, "-c", SAVE_WEBHOOK_BLOCK.format(url=url)], cwd=REPO, env=deployed.env, capture_output=True, text=True, timeout=120,
        )
        assert saved.returncode == 0, saved.stderr[-3000:]
        notify = tmp_path / "notify.yaml"
        notify.write_text((REPO / "docs" / "automations" / "notify-on-promotion.yaml").read_text().replace("WEBHOOK_BLOCK_DOCUMENT_ID", saved.stdout.split()[-1]))
        deployed.prefect("automation", "create", "--from-file", str(notify))

        weeks = [p for p in write_weeks(tmp_path / "outbox", range(4, 6), config=TINY_SHOP, broken_weeks=(5,)) if p.name.startswith("interactions-")]
        landed = subprocess.run(
            [sys.executable, "-m", "flows", "land", *map(str, weeks)], cwd=REPO, env=deployed.env, capture_output=True, text=True, timeout=120,
        )
        assert landed.returncode == 0, landed.stderr[-3000:]
        assert [line.endswith("event freshrec.batch.landed sent") for line in landed.stdout.splitlines()] == [True, True], landed.stdout

        deadline = time.monotonic() + 900
        while True:
            runs = triggered_runs(deployed, training["id"], automation["id"])
            if len(runs) == 2 and all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
                break
            assert time.monotonic() < deadline, [(r["name"], r["state"]["type"]) for r in runs]
            time.sleep(3)
        assert [r["state"]["type"] for r in runs] == ["COMPLETED", "COMPLETED"], (deployed.logs / "worker.log").read_text()[-4000:]

        moves, batches = moves_and_batches(deployed.home)
        week4, week5 = (next(b for b in batches if b.file_name == p.name) for p in weeks)
        assert week4.decision in ("trained", "skip") and week5.status == "rejected"
        expected = {f"freshrec: batch {week5.file_name} rejected"}
        expected |= {f"freshrec: ecommerce-recommender version {m.to_version} is @champion" for m in moves[moves_before:] if m.action == "promote"}
        deadline = time.monotonic() + 120
        while not expected <= {r["subject"] for r in received}:
            assert time.monotonic() < deadline, (expected, received)
            time.sleep(2)
    (rejection,) = [r for r in received if r["subject"] == f"freshrec: batch {week5.file_name} rejected"]
    assert f"ledger batch {week5.id}" in rejection["body"] and "item_id" in rejection["body"]
    assert_ledger_consistent(deployed)


def test_the_service_answers_with_a_triggered_promotion_and_follows_a_rollback_under_load(deployed, tmp_path):
    """The running recommendation service, on the module's MLflow server: a week landed with
    `python -m flows land` starts a triggered run that promotes (every update this module trains
    promotes: FRESHREC_MIN_IMPROVEMENT), and the service answers with the new version within one
    poll period of the run's end, without a restart; the rollback deployment moves the alias back
    and the service follows. A load of a fixed count runs through both swaps: every answer a 200."""
    from tests.e2e.test_recommendation_service import Load, Service, start_service, stop_group

    training = get_json(f"{deployed.prefect_api}/deployments/name/continuous-training/continuous-training")
    (automation,) = get_json(f"{deployed.prefect_api}/automations/related-to/prefect.deployment.{training['id']}")
    triggered_before = {r["id"] for r in triggered_runs(deployed, training["id"], automation["id"])}
    before = deployed.champion()
    process, port = start_service(deployed.env | {"FRESHREC_SERVE_POLL_SECONDS": str(SERVE_POLL_SECONDS)}, deployed.logs / "serve.log")
    try:
        service = Service(port, process, None, "", None, deployed.logs / "serve.log")
        deadline = time.monotonic() + 120
        while True:
            try:
                if service.version() == before:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (deployed.logs / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        week = pd.read_parquet(next((deployed.home / "accepted").glob("*-interactions-week000.parquet")))
        paths = [f"/recommendations/{urllib.parse.quote(str(week['user_id'].iloc[0]))}?k=5", "/recommendations/never-seen-visitor?k=5"]
        load = Load(port, paths, clients=3, requests=5000, pause=0.02)
        load.start()

        (week6,) = [p for p in write_weeks(tmp_path / "outbox", range(6, 7), config=TINY_SHOP) if p.name.startswith("interactions-")]
        landed_at = time.time()
        landed = subprocess.run([sys.executable, "-m", "flows", "land", str(week6)], cwd=REPO, env=deployed.env, capture_output=True, text=True, timeout=120)
        assert landed.returncode == 0, landed.stderr[-3000:]
        deadline = time.monotonic() + 600
        while not (runs := [r for r in triggered_runs(deployed, training["id"], automation["id"]) if r["id"] not in triggered_before]):
            assert time.monotonic() < deadline, "no triggered run"
            time.sleep(1)
        run = deployed.wait(runs[0]["id"])
        promoted = deployed.champion()
        assert promoted != before, "the triggered run did not promote"
        service.wait_for_version(promoted, timeout=120)
        run_started, run_ended = (datetime.fromisoformat(run[key]).timestamp() for key in ("start_time", "end_time"))
        served_after = load.first_answer_from(promoted) - run_ended  # by the clients' clocks: the same machine's
        assert served_after <= SERVE_POLL_SECONDS + 10, served_after

        rollback_run = deployed.prefect("deployment", "run", "rollback/rollback", "--param", "reason=the new lists look wrong")
        deployed.wait(next(line.split()[-1] for line in rollback_run.stdout.splitlines() if "UUID" in line))
        assert deployed.champion() == before
        service.wait_for_version(before, timeout=120)
        back_at = load.answered()
        # A hundred more answers, of the version rolled back to, unless the load ran out first.
        while load.answered() < back_at + 100 and any(thread.is_alive() for thread in load.threads):
            assert time.monotonic() < deadline, "the load is stuck"
            time.sleep(0.1)
        load.stop(timeout=120)
    finally:
        stop_group(process)

    print(f"\nlanded -> triggered run {run['name']} started {run_started - landed_at:.1f} s later, ran {run_ended - run_started:.1f} s; "
          f"first answer from version {promoted} {served_after:.2f} s after the run ended (poll {SERVE_POLL_SECONDS:g} s), "
          f"{load.first_answer_from(promoted) - landed_at:.1f} s after landing")
    assert not load.errors, load.errors[:5]
    assert [len(answers) for answers in load.answers] == load.sent and all(load.sent)  # none lost
    assert all(status == 200 for answers in load.answers for status, _ in answers)
    for sequence in load.versions_per_client():
        changes = [(a, b) for a, b in zip(sequence, sequence[1:]) if a != b]
        assert sequence[0] == before and changes in ([(before, promoted), (promoted, before)], [(before, promoted)], []), changes
    assert any(promoted in sequence for sequence in load.versions_per_client())  # the load spanned the promotion's swap
    assert_ledger_consistent(deployed)
