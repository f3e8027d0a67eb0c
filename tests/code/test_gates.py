"""The gates as tables of cases. Risk guarded: retraining on noise, or shipping a worse model."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from models.settings import Settings
from tasks.gates import PromotionEvidence, UpdateSignals, champion_age_days, decide_update, judge_challenger

SETTINGS = Settings(
    drift_share_threshold=0.1, decay_threshold=0.2, volume_threshold_rows=10_000, max_champion_age_days=60,
    min_new_rows=1_000, min_primary_metric=0.05, min_improvement=0.01,
)


def signals(drift=0.0, decay=0.0, rows=5_000, age=7.0) -> UpdateSignals:
    return UpdateSignals(drift_share=drift, decay=decay, new_rows=rows, champion_age_days=age)


@pytest.mark.parametrize(
    ("measured", "update", "reason_fragment"),
    [
        (signals(), False, "no signal crossed its threshold"),
        (signals(drift=0.09, decay=0.19, rows=9_999, age=59), False, "drift share 0.09 < 0.10"),
        (signals(drift=0.11), True, "drift share 0.11 >= 0.10"),  # one of nine columns is enough
        (signals(decay=0.2), True, "Recall decay 20% >= 20%"),  # the threshold itself fires
        (signals(rows=10_000), True, "new rows 10,000 >= 10,000"),
        (signals(age=61), True, "champion age 61 days >= 60"),
        (signals(drift=0.9, decay=0.5, rows=999, age=90), False, "only 999 new rows"),  # nothing on a sliver
        (signals(drift=0.5, rows=20_000), True, "new rows 20,000 >= 10,000"),
    ],
)
def test_decide_update(measured, update, reason_fragment):
    decision = decide_update.fn(measured, SETTINGS)
    assert decision.update is update
    assert any(reason_fragment in reason for reason in decision.reasons), decision.reasons
    assert [s.name for s in decision.signals] == ["drift_share", "decay", "new_rows", "champion_age_days"]


def test_decay_is_named_for_the_primary_metric():
    """Decay is measured on the metric the gate decides on, and says which."""
    decision = decide_update.fn(signals(decay=0.3), SETTINGS.model_copy(update={"primary_metric": "ndcg"}))
    assert decision.reasons == ["NDCG decay 30% >= 20%"]


def test_every_signal_is_reported_with_value_threshold_and_verdict():
    decision = decide_update.fn(signals(drift=0.5, decay=0.1, rows=20_000, age=3), SETTINGS)
    assert [(s.value, s.threshold, s.fired) for s in decision.signals] == [
        (0.5, 0.1, True), (0.1, 0.2, False), (20_000, 10_000, True), (3, 60, False),
    ]
    assert len(decision.reasons) == 2


def test_champion_age_counts_days_of_data_past_the_watermark():
    watermark = pd.Timestamp("2011-01-31T12:00:00Z")
    assert champion_age_days(datetime(2011, 3, 2, 12, tzinfo=timezone.utc), watermark) == 30
    assert champion_age_days(datetime(2011, 1, 1, tzinfo=timezone.utc), watermark) == 0  # an older batch
    assert champion_age_days(None, watermark) == 0


def evidence(challenger, champion, hist=None, gain_ci=None, metric="recall", warm=True) -> PromotionEvidence:
    """Newest-slice values, and (challenger, champion) on the historical slice when given."""
    return PromotionEvidence(
        metric, 20, challenger, champion, gain_ci,
        historical_challenger=hist[0] if hist else None, historical_champion=hist[1] if hist else None, warm_started=warm,
    )


# Each row: the evidence, the settings changed from GATE, whether it promotes, and the failed
# check (None when it promotes) with a fragment of its reason.
GATE = SETTINGS.model_copy(update={"max_forgetting": 0.02, "min_relative_improvement": 0.0})


@pytest.mark.parametrize(
    ("case", "changes", "promote", "failed", "fragment"),
    [
        # value threshold
        (evidence(0.04, None), {}, False, "value", "Recall@20 (purchase events) 0.0400 is below the minimum 0.0500"),
        (evidence(0.05, None), {}, True, None, "first champion"),  # the threshold itself passes
        (evidence(0.04, 0.01), {}, False, "value", "below the minimum"),  # better than a broken champion is not enough
        (evidence(0.04, None, metric="ndcg"), {}, False, "value", "NDCG@20 (purchase events) 0.0400"),
        # absolute change threshold (min_improvement 0.01)
        (evidence(0.30, 0.28), {}, True, None, "+0.0200"),
        (evidence(0.30, 0.29), {}, False, "change", "does not beat"),  # exactly the required gain is not enough
        (evidence(0.30, 0.30), {}, False, "change", "+0.0000"),
        (evidence(0.20, 0.30), {}, False, "change", "-0.1000"),
        (evidence(0.30, 0.30), {"min_improvement": 0.0}, False, "change", "does not beat"),  # a tie never ships
        (evidence(0.3001, 0.30), {"min_improvement": 0.0}, True, None, "beats"),
        # relative change threshold: +0.02 on 0.28 is +7.1%
        (evidence(0.30, 0.28), {"min_relative_improvement": 0.05}, True, None, "+7.1%"),
        (evidence(0.30, 0.28), {"min_relative_improvement": 0.10}, False, "change", "+10.0%"),
        (evidence(0.06, 0.0), {"min_relative_improvement": 0.5}, True, None, "+inf%"),  # anything beats a zero champion
        # forgetting tolerance on the historical slice (0.02)
        (evidence(0.30, 0.28, hist=(0.39, 0.40)), {}, True, None, "forgot +0.0100"),
        (evidence(0.30, 0.28, hist=(0.38, 0.40)), {}, True, None, "within the tolerance"),  # exactly the tolerance
        (evidence(0.30, 0.28, hist=(0.37, 0.40)), {}, False, "forgetting", "(forgot +0.0300), beyond the tolerance of 0.0200"),
        (evidence(0.30, 0.28, hist=(0.45, 0.40)), {}, True, None, "forgot -0.0500"),  # it learned, not forgot
        # a retrain from scratch has nothing of the champion's to forget: its lower in-sample fit
        # on the champion's training rows is not forgetting (Online Retail: 0.63 vs 0.82)
        (evidence(0.29, 0.14, hist=(0.63, 0.82), warm=False), {}, True, None, "not a forgetting check"),
        # significance, only when asked for
        (evidence(0.30, 0.28, gain_ci=(-0.01, 0.05)), {}, True, None, "beats"),
        (evidence(0.30, 0.28, gain_ci=(-0.01, 0.05)), {"require_significant_gain": True}, False, "significance", "not above zero"),
        (evidence(0.30, 0.28, gain_ci=(0.005, 0.05)), {"require_significant_gain": True}, True, None, "is above zero"),
        (evidence(0.30, 0.28), {"require_significant_gain": True}, False, "significance", "no interval"),
        # every failing check is reported, not only the first
        (evidence(0.04, 0.05, hist=(0.1, 0.4)), {}, False, "forgetting", "forgot +0.3000"),
    ],
)
def test_promotion_gate(case, changes, promote, failed, fragment):
    verdict = judge_challenger.fn(case, GATE.model_copy(update=changes))
    assert verdict.promote is promote, verdict.reasons
    assert any(fragment in reason for reason in verdict.reasons), verdict.reasons
    failed_checks = [c.name for c in verdict.checks if not c.passed]
    assert (failed in failed_checks) if failed else failed_checks == []
    assert len(verdict.reasons) == len(verdict.checks)  # passing checks are reported too


def test_a_promotion_reports_every_check_it_passed():
    verdict = judge_challenger.fn(evidence(0.30, 0.28, hist=(0.40, 0.40), gain_ci=(0.01, 0.03)), GATE.model_copy(update={"require_significant_gain": True}))
    assert verdict.promote
    assert [c.name for c in verdict.checks] == ["value", "change", "forgetting", "significance"]
