"""`reconcile` against a real MLflow store (SQLite) and ledger, without training: the registry is
brought to the ledger's last recorded move, a move to a version the registry lacks is released
with its batches, and a registry that is not the ledger's is refused, not "repaired".

Risks guarded: a ledger ahead of the registry that blocks every later promotion; a released
promotion whose batches stay marked consumed (never trained on again); a wrong tracking URI
that erases the audit trail.
"""

from __future__ import annotations

import pytest

from tasks import ledger
from tasks.registry import PREVIOUS_ALIAS, ReconcileError, reconcile
from tasks.tracking import mlflow_client


def registry_with_versions(settings, count: int):
    """A registered model with ``count`` versions, each from a run of its own; returns the client and run ids."""
    client, experiment_id = mlflow_client(settings)
    client.create_registered_model(settings.registered_model_name)
    run_ids = []
    for _ in range(count):
        run = client.create_run(experiment_id)
        client.create_model_version(settings.registered_model_name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        run_ids.append(run.info.run_id)
    return client, run_ids


def batch(engine, name: str) -> int:
    return ledger.record_received(engine, name, f"sha-{name}", 1, "interactions")


def consumed(engine) -> dict[str, str | None]:
    return {b.file_name: b.consumed_by_version for b in ledger.all_batches(engine)}


def aliases(client, settings) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(settings.registered_model_name).aliases.items()}


def test_a_ledger_ahead_of_the_registry_is_applied_once(settings):
    client, runs = registry_with_versions(settings, 2)
    engine = ledger.connect(settings.ledger_url)
    name, alias = settings.registered_model_name, settings.champion_alias
    first, second, late = batch(engine, "a"), batch(engine, "b"), batch(engine, "c")
    ledger.claim_move(engine, name, alias, None, "1", "promote", "bootstrap", runs[0], consumed_batch_ids=[first])
    client.set_registered_model_alias(name, alias, "1")
    # Recorded, with its batch, in one transaction; the run was killed before the registry moved.
    ledger.claim_move(engine, name, alias, "1", "2", "promote", "better", runs[1], consumed_batch_ids=[second])
    # A claim against the champion the registry still shows loses, and consumes nothing.
    assert ledger.claim_move(engine, name, alias, "1", "2", "promote", "stale", runs[1], consumed_batch_ids=[late]) is None

    repaired = reconcile(settings)
    assert repaired.applied and repaired.move.to_version == "2" and repaired.found == {alias: "1"}
    assert "@champion = 1, @previous-champion = none" in repaired.repairs[0]
    assert aliases(client, settings) == {alias: "2", PREVIOUS_ALIAS: "1"}
    assert client.get_run(runs[1]).data.tags["freshrec.promotion"] == "promoted to version 2"
    assert consumed(engine) == {"a": "1", "b": "2", "c": None}

    again = reconcile(settings)
    assert not again.applied and again.repairs == [] and again.move.to_version == "2"


def test_a_move_to_a_version_the_registry_lacks_is_released_with_its_batches(settings):
    client, runs = registry_with_versions(settings, 2)
    engine = ledger.connect(settings.ledger_url)
    name, alias = settings.registered_model_name, settings.champion_alias
    ids = [batch(engine, n) for n in ("a", "b", "c")]
    ledger.claim_move(engine, name, alias, None, "1", "promote", "bootstrap", runs[0], consumed_batch_ids=ids[:1])
    ledger.claim_move(engine, name, alias, "1", "2", "promote", "better", runs[1], consumed_batch_ids=ids[1:2])
    client.set_registered_model_alias(name, PREVIOUS_ALIAS, "1")
    client.set_registered_model_alias(name, alias, "2")
    ledger.claim_move(engine, name, alias, "2", "3", "promote", "gone since", None, consumed_batch_ids=ids[2:])

    repaired = reconcile(settings)
    assert [m.to_version for m in repaired.released] == ["3"] and not repaired.applied
    assert "the registry has no version 3; the batches it consumed wait for the next update" in repaired.repairs[0]
    assert [m.to_version for m in ledger.moves(engine, name)] == ["1", "2"]
    assert consumed(engine) == {"a": "1", "b": "2", "c": None}
    assert aliases(client, settings) == {alias: "2", PREVIOUS_ALIAS: "1"}


def test_a_registry_without_the_model_is_refused_and_the_trail_kept(settings):
    mlflow_client(settings)  # an empty store: another tracking URI than the ledger's
    engine = ledger.connect(settings.ledger_url)
    ledger.claim_move(engine, settings.registered_model_name, settings.champion_alias, None, "1", "promote", "bootstrap")

    with pytest.raises(ReconcileError, match="has no such model: is the tracking URI"):
        reconcile(settings)
    assert [m.to_version for m in ledger.moves(engine)] == ["1"]
