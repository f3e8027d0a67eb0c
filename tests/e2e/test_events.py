"""The Prefect events freshrec sends (docs/events.md), read back from a real Prefect server.

`python -m flows land` announces each file it lands; validation announces a batch it rejects; a
promotion and a rollback announce the move of @champion, with the flow run that made it among the
related resources. Risks guarded: an automation waiting for an event that is never sent, or that
carries too little to act on (which file, which version, why).
"""

from __future__ import annotations

import hashlib
import time

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

from data_checks.sources.synthetic import write_weeks
from flows.__main__ import main
from flows.bootstrap import bootstrap
from flows.rollback import rollback
from flows.validate_landing import validate_landing
from tasks import events
from tasks.registry import register
from tasks.tracking import load_champion
from tests.conftest import TINY_SHOP
from tests.e2e.test_registry import challenger_run

pytestmark = pytest.mark.slow
ARRIVAL_SECONDS = 60  # events reach the server's store a few seconds after they are sent


def wait_for_event(name: str, about: str, matches=lambda event: True, timeout: float = ARRIVAL_SECONDS):
    """The one event called ``name`` whose resource, or a related one, is ``about`` and for which
    ``matches(event)`` holds, once the server has it."""
    query = EventFilter(event=EventNameFilter(name=[name]), any_resource=EventAnyResourceFilter(id=[about]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            found = [e for e in client.read_events(query, limit=50).events if matches(e)]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, f"no {name} event about {about} after {timeout} s"
            time.sleep(1)


def related(event, role: str) -> list[str]:
    return [r.id for r in event.related if r.role == role]


def flow_run_resource(state) -> str:
    return f"prefect.flow-run.{state.state_details.flow_run_id}"


def test_land_sends_a_batch_landed_event(capsys, settings, prefect_server, tmp_path):
    (week,) = [p for p in write_weeks(tmp_path / "outbox", range(7, 8), seed=42, config=TINY_SHOP) if p.name.startswith("interactions-")]
    digest = hashlib.sha256(week.read_bytes()).hexdigest()
    assert main(["land", str(week), "--landing-dir", str(settings.landing_dir)]) == 0
    assert f"event {events.BATCH_LANDED} sent" in capsys.readouterr().out

    event = wait_for_event(events.BATCH_LANDED, f"freshrec.landing.{week.name}", lambda e: e.payload.get("sha256") == digest)
    assert event.resource.id == f"freshrec.landing.{week.name}" and event.resource.name == week.name
    assert event.payload == {
        "file_name": week.name, "bytes": week.stat().st_size, "sha256": digest, "landing_dir": str(settings.landing_dir.resolve()),
    }


def test_a_rejected_batch_sends_a_batch_rejected_event(settings, prefect_server):
    write_weeks(settings.landing_dir, range(0, 1), config=TINY_SHOP, broken_weeks=(0,))
    state = validate_landing(settings, return_state=True)
    assert state.is_completed(), state.message
    (rejected,) = [v for v in state.result() if v.status == "rejected"]

    event = wait_for_event(events.BATCH_REJECTED, flow_run_resource(state))
    path = settings.landing_dir / rejected.file_name
    assert event.resource.id == "freshrec.landing.interactions-week000.csv"
    assert event.payload["file_name"] == rejected.file_name and event.payload["batch_id"] == rejected.batch_id
    assert event.payload["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert event.payload["rows"] == rejected.rows_in > 0
    assert "item_id" in event.payload["reason"] and len(event.payload["reason"]) <= events.MAX_REASON_CHARS


def test_a_promotion_and_a_rollback_send_their_events(settings, prefect_server):
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    booted = bootstrap(settings, return_state=True)
    assert booted.is_completed(), booted.message
    name = settings.registered_model_name
    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    champion_run = client.get_model_version(name, "1").run_id

    promoted = wait_for_event(events.MODEL_PROMOTED, flow_run_resource(booted))
    assert promoted.resource.id == f"freshrec.model.{name}"
    # Prefect adds the run the task ran in (the train-and-gate subflow); freshrec adds the bootstrap's.
    assert related(promoted, "root-flow-run") == [flow_run_resource(booted)]
    assert len(related(promoted, "flow-run")) == 1 and related(promoted, "flow-run") != [flow_run_resource(booted)]
    payload = promoted.payload
    assert (payload["registered_model"], payload["alias"], payload["version"], payload["previous_version"]) == (name, "champion", "1", None)
    assert payload["run_id"] == champion_run and payload["batch_file"] == "interactions-week001.csv"
    assert payload["k"] == settings.eval_k and 0 < payload["challenger_recall"] <= 1 and payload["champion_recall"] is None
    assert related(promoted, "model-version") == [f"freshrec.model-version.{name}.1"]
    assert related(promoted, "batch") == ["freshrec.landing.interactions-week001.csv"]

    # A second version, then back to the first, with a reason.
    write_weeks(settings.landing_dir, range(2, 3), config=TINY_SHOP)
    validate_landing(settings)
    champion = load_champion.fn(settings)
    run_id, uri, data, tags = challenger_run(settings, champion, seed=1)
    assert register(settings, run_id, uri, champion, tags, data.batch_ids).version == "2"
    state = rollback("week 2 recommendations look wrong", settings=settings, return_state=True)
    assert state.is_completed(), state.message

    rolled_back = wait_for_event(events.MODEL_ROLLED_BACK, flow_run_resource(state))
    assert rolled_back.resource.id == f"freshrec.model.{name}"
    assert {k: rolled_back.payload[k] for k in ("registered_model", "alias", "from_version", "to_version", "reason")} == {
        "registered_model": name, "alias": "champion", "from_version": "2", "to_version": "1", "reason": "week 2 recommendations look wrong",
    }
    assert rolled_back.payload["run_id"] == champion_run
    assert related(rolled_back, "model-version") == [f"freshrec.model-version.{name}.1"]
    assert related(rolled_back, "rolled-back-from") == [f"freshrec.model-version.{name}.2"]


def test_an_event_that_cannot_be_sent_is_a_warning_not_an_error(prefect_server, caplog):
    """Prefect refuses an event over its size limit (1.5 MB): the caller goes on, warned."""
    assert events.emit("freshrec.test.too-large", events.landing_resource("interactions-x.csv"), {"blob": "x" * 2_000_000}) is False
    assert "event freshrec.test.too-large was not sent: EventTooLarge" in caplog.text
