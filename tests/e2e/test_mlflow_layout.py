"""MLflow the way its users browse it: one parent run per flow run, the batches' validate,
decide and train runs nested under it, each tagged with its Prefect flow run; the registered
model and each version described in words.

Risks guarded: freshrec pointing the process's MLflow at its store as a side effect (a later
``Settings()`` or the caller's own MLflow code would then use it); a flat experiment of dozens of runs nobody can tell apart; a run in MLflow that
cannot be traced to the Prefect run that made it; a registry whose versions say nothing of
what they were trained on or why they replaced the champion.
"""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow import MlflowClient

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import bootstrap
from flows.continuous_training import continuous_training
from tasks.tracking import CARD_ARTIFACT, load_champion
from tests.conftest import TINY_SHOP
from tests.conftest import completed_run as run

pytestmark = pytest.mark.slow


def runs_by_stage(client: MlflowClient, experiment_id: str) -> dict[str, list]:
    stages: dict[str, list] = {}
    for r in client.search_runs([experiment_id], max_results=1000):
        stages.setdefault(r.data.tags.get("freshrec.stage", "?"), []).append(r)
    return stages


def test_runs_nest_under_their_flow_run_and_versions_say_why(settings, prefect_server, tmp_path, monkeypatch):
    # The process's own MLflow store, set before freshrec runs, is the one it finds after.
    own = f"sqlite:///{tmp_path / 'own-mlflow.db'}"
    mlflow.set_tracking_uri(own)
    # A flow run looks its experiment up once, not at each of its MLflow calls (each a request
    # to a tracking server, and a password check on one with basic auth).
    lookups = []
    real_lookup = MlflowClient.get_experiment_by_name
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lambda self, name: lookups.append(name) or real_lookup(self, name))
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    run(bootstrap, settings)
    assert lookups == [settings.experiment_name]
    write_weeks(settings.landing_dir, range(2, 4), config=TINY_SHOP)
    outcomes, _ = run(continuous_training, settings)
    assert lookups == [settings.experiment_name] * 2  # its batches' subflows share the run's
    # A run with nothing new leaves no empty parent behind.
    run(continuous_training, settings)
    assert mlflow.get_tracking_uri() == own and os.environ["MLFLOW_TRACKING_URI"] == own
    assert "MLFLOW_REGISTRY_URI" not in os.environ

    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment_id = client.get_experiment_by_name(settings.experiment_name).experiment_id
    stages = runs_by_stage(client, experiment_id)
    parents = {r.info.run_id: r for r in stages.pop("flow")}
    assert sorted(r.data.tags["prefect.flow_name"] for r in parents.values()) == ["bootstrap", "continuous-training"]
    assert set(stages) == {"validation", "decision", "training"}, stages.keys()
    assert len(stages["validation"]) == 5 and len(stages["decision"]) == 2  # 4 weeks + 1 catalog; weeks 2 and 3
    for parent in parents.values():
        tags = parent.data.tags
        assert tags["prefect.flow_run_id"] and tags["prefect.flow_run_name"] in parent.info.run_name
        assert parent.info.status == "FINISHED"
    for child in [r for rs in stages.values() for r in rs]:
        tags = child.data.tags
        assert tags.get("mlflow.parentRunId") in parents, (child.info.run_name, tags)
        assert tags["prefect.flow_run_id"]  # the (sub)flow run that logged it
    # The bootstrap's runs under the bootstrap's parent, the update's under the update's.
    flow_of = {run_id: r.data.tags["prefect.flow_name"] for run_id, r in parents.items()}
    trainings = {r.info.run_name: flow_of[r.data.tags["mlflow.parentRunId"]] for r in stages["training"]}
    assert trainings["bootstrap"] == "bootstrap"
    assert set(trainings.values()) <= {"bootstrap", "continuous-training"} and len(trainings) == 1 + sum(o.update for o in outcomes)

    # Every training run carries its champion card; the champion is read back from it.
    for training in stages["training"]:
        assert [a.path for a in client.list_artifacts(training.info.run_id) if a.path == CARD_ARTIFACT] == [CARD_ARTIFACT]
    champion = load_champion.fn(settings)
    newest = client.get_run(champion.run_id).data.metrics
    assert champion.holdout_scores == {m: pytest.approx(newest[f"challenger.newest.{m}"]) for m in ("recall", "ndcg", "hit_rate", "mrr")}
    assert champion.holdout_score("recall") == pytest.approx(newest["challenger_recall"])

    model = client.get_registered_model(settings.registered_model_name)
    assert f"@{settings.champion_alias}" in model.description
    versions = client.search_model_versions(f"name = '{settings.registered_model_name}'")
    assert versions
    for version in versions:
        line = version.description
        assert "\n" not in line and line.startswith("Trained on batches ")
        assert version.tags["freshrec.run_id"] in line and "Promoted: " in line
        parent = version.tags["freshrec.parent_version"]
        assert ("from scratch" in line) if parent == "none" else (f"warm-started from version {parent}" in line)
