"""The backtest's paired comparison. Risks guarded: an interval that cannot exclude zero (or
always does), a comparison of two tracks scored on different users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.backtest_harness import Track, format_report, paired_difference, significance


def _track(name: str, periods: dict[str, dict[str, float]]) -> Track:
    track = Track(name, name)
    for label, per_user in periods.items():
        values = np.array(list(per_user.values()))
        track.record(label, list(per_user), values, values / 2)
    return track


def test_a_constant_gain_has_a_point_interval_and_the_mean_is_over_periods():
    a = _track("a", {"m1": {"u1": 0.5, "u2": 0.7}, "m2": {"u1": 0.2, "u3": 0.4, "u4": 0.6}})
    b = _track("b", {"m1": {"u1": 0.4, "u2": 0.6}, "m2": {"u1": 0.1, "u3": 0.3, "u4": 0.5}})
    d = paired_difference(a, b, "recall")
    assert d["mean_difference"] == pytest.approx(0.1) and d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1)
    assert d["periods"] == 2
    assert paired_difference(a, b, "ndcg")["mean_difference"] == pytest.approx(0.05)


def test_the_interval_covers_zero_for_noise_and_excludes_it_for_a_real_gain():
    rng = np.random.default_rng(1)
    users = [f"u{i}" for i in range(400)]
    base = rng.uniform(size=400)
    noise = _track("noise", {"m": dict(zip(users, base + rng.normal(0, 0.1, 400)))})
    better = _track("better", {"m": dict(zip(users, base + 0.05 + rng.normal(0, 0.1, 400)))})
    reference = _track("reference", {"m": dict(zip(users, base))})
    tie = paired_difference(noise, reference, "recall")
    assert tie["low"] < 0 < tie["high"]
    gain = paired_difference(better, reference, "recall")
    assert 0 < gain["low"] < 0.05 < gain["high"]


def test_tracks_scored_on_other_users_are_not_compared():
    a = _track("a", {"m": {"u1": 0.5, "u2": 0.7}})
    b = _track("b", {"m": {"u1": 0.4, "u3": 0.6}})
    with pytest.raises(ValueError, match="scored different users in m"):
        paired_difference(a, b, "recall")


def test_the_triggered_policy_is_compared_with_retraining_and_every_peer_in_the_report():
    periods = {"m": {"u1": 0.5, "u2": 0.7}}
    tracks = [_track(name, periods) for name in ("never", "retrain", "triggered", "repeat purchase", "TIFU-KNN (k=1)")]
    compared = significance(tracks)
    assert list(compared) == ["retrain", "repeat purchase", "TIFU-KNN (k=1)"]
    result = {"results": {t.name: t.summary() for t in tracks}, "triggered_vs": compared}
    text = format_report(result)
    lines = text.splitlines()
    assert any(line.startswith("triggered minus") for line in lines)
    row = [line for line in lines if line.startswith("TIFU-KNN (k=1) ")][-1]  # the second table
    assert row.split()[-6:] == ["+0.0000", "[+0.0000,", "+0.0000]"] * 2



def test_the_report_is_cut_at_the_settings_eval_k_and_a_report_without_k_reads_as_k_20(tmp_path):
    """The backtest follows eval_k: its keys, table, protocol and the peers' lists are at that k;
    a report written before it named its k is read at 20."""
    from data_checks.sources.synthetic import SyntheticShop
    from flows.backtest_harness import K, Period, plot, protocol, report, run_peers

    shop = SyntheticShop(0)
    weeks = {f"week{w:03d}": shop.week(w) for w in range(3)}
    bootstrap, tests = [Period("week000", ())], [Period("week001", ()), Period("week002", ())]
    at = {k: run_peers(weeks, bootstrap, tests, include_als=False, k=k) for k in (1, 50)}
    for k, tracks in at.items():
        assert {t.k for t in tracks} == {k}
    # Recall@1 = |top1 ∩ R| / min(1, |R|): each user's is a hit or a miss; at 50 a share of a basket.
    per_user = {k: pd.concat([frame["recall"] for t in tracks for frame in t.per_user.values()]) for k, tracks in at.items()}
    assert set(per_user[1].unique()) == {0.0, 1.0} and not per_user[50].isin([0.0, 1.0]).all()

    result = report("synthetic", "week", bootstrap, tests, at[50], wall_seconds=1.0)
    assert result["k"] == 50 and "Recall@50 = |top50 ∩ R| / min(50, |R|)" in result["protocol"] == protocol(50)
    name = at[50][0].name
    assert set(result["results"][name]) >= {"mean_recall_at_50", "mean_ndcg_at_50", "recall_at_50", "ndcg_at_50"}
    assert "mean Recall@50" in format_report(result) and "@20" not in format_report(result)
    assert plot(result, tmp_path / "at-50.png").stat().st_size > 10_000

    old = {"results": {name: {key.replace("_50", "_20"): value for key, value in result["results"][name].items()}}}
    assert K == 20 and "mean Recall@20" in format_report(old)
    mixed = [Track("never", "never", k=10), Track("triggered", "triggered", k=20)]
    with pytest.raises(ValueError, match=r"one report, one cut-off: the tracks are at k = \[10, 20\]"):
        report("synthetic", "week", bootstrap, tests, mixed, wall_seconds=1.0)
