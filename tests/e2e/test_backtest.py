"""A small synthetic backtest through the real flows. Risks guarded: a score that peeks at the
period it scores, a policy that does not do what its name says, a report missing what it promises."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from flows.backtest import backtest
from flows.backtest_harness import POLICIES
from tests.conftest import TINY_SHOP

pytestmark = pytest.mark.slow


def test_synthetic_backtest_report(settings, prefect_server, tmp_path):
    out = tmp_path / "report" / "backtest.json"
    state = backtest(
        source="synthetic", out=str(out), synthetic_weeks=5, synthetic_bootstrap_weeks=2, synthetic_drift_from_week=3,
        synthetic_shop=TINY_SHOP, settings=settings, return_state=True,
    )
    assert state.is_completed(), state.message
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000  # the per-period plot
    tests = ["week002", "week003", "week004"]
    assert report["test_periods"] == tests and report["bootstrap_periods"] == ["week000", "week001"]
    assert "Prequential" in report["protocol"] and report["machine"]
    results = report["results"]
    assert list(results) == [
        *POLICIES, "recent popularity (30 days)", "repeat purchase", "item-kNN (cosine)",
        "TIFU-KNN (k=300, rb=0.9, rg=0.7, alpha=0.7, m=7)", "TIFU-KNN (k=900, rb=0.9, rg=0.6, alpha=0.2, m=3)",
        "TIFU-KNN (k=100, rb=1.0, rg=0.6, alpha=0.7, m=7)",
        "UP-CF@r (r=10, alpha=0.75, q=10)", "UP-CF@r (r=25, alpha=0.75, q=10)", "UP-CF@r (r=5, alpha=0.5, q=5)", "ALS (implicit)",
    ]
    for name, track in results.items():
        assert list(track["recall_at_20"]) == tests, name
        assert all(0.0 <= v <= 1.0 for v in track["recall_at_20"].values()), name
        assert track["mean_recall_at_20"] == pytest.approx(sum(track["recall_at_20"].values()) / 3)

    # The policies do what their names say. Never: the bootstrap champion serves every week.
    assert results["never"]["updates"] == 0 and set(results["never"]["champion_versions"].values()) == {"1"}
    assert results["never"]["train_seconds"] == 0
    # Every week is an update for retrain and incremental (the gate still decides promotion).
    for policy in ("retrain", "incremental"):
        assert results[policy]["decided_updates"] == 3 and results[policy]["train_seconds"] > 0
    # Prequential: the champion scored on a week was registered before the week was used, so the
    # first test week is always scored by the bootstrap champion, and versions never go back.
    for policy in POLICIES:
        versions = [int(v) for v in results[policy]["champion_versions"].values()]
        assert versions[0] == 1 and versions == sorted(versions)
        assert versions[-1] <= 1 + results[policy]["updates"]
    # Identical champions score identically: every policy's first week is the same model's.
    assert len({round(results[p]["recall_at_20"]["week002"], 10) for p in POLICIES}) == 1

    # The triggered policy against retraining and every peer: a paired interval around the mean.
    compared = report["triggered_vs"]
    assert list(compared) == ["retrain", *list(results)[len(POLICIES):]]
    for name, metrics in compared.items():
        for metric, key in (("recall", "mean_recall_at_20"), ("ndcg", "mean_ndcg_at_20")):
            d = metrics[metric]
            assert d["periods"] == 3 and d["low"] <= d["mean_difference"] <= d["high"], name
            assert d["mean_difference"] == pytest.approx(results["triggered"][key] - results[name][key]), name
    assert "triggered minus" in state.message

    # The report is logged to MLflow too.
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(state.result()["mlflow_run_id"])
    assert run.data.metrics["triggered.mean_recall_at_20"] == pytest.approx(results["triggered"]["mean_recall_at_20"])
    tifu = "TIFU-KNN (k=300, rb=0.9, rg=0.7, alpha=0.7, m=7)"
    assert run.data.metrics["TIFU-KNN_k_300_rb_0.9_rg_0.7_alpha_0.7_m_7.mean_recall_at_20"] == pytest.approx(results[tifu]["mean_recall_at_20"])
    assert "item-kNN_cosine.mean_recall_at_20" in run.data.metrics
    assert "backtest/backtest.json" in [a.path for a in MlflowClient(settings.mlflow_tracking_uri).list_artifacts(run.info.run_id, "backtest")]
