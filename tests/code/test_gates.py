"""The gates as tables of cases. Risk guarded: retraining on noise, or shipping a worse model."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from flows.settings import Settings
from tasks.gates import UpdateSignals, champion_age_days, decide_update, promotion_verdict

SETTINGS = Settings(
    drift_share_threshold=0.1, decay_threshold=0.2, volume_threshold_rows=10_000, max_champion_age_days=60,
    min_new_rows=1_000, min_recall=0.05, min_improvement=0.01,
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
    decision = decide_update(measured, SETTINGS)
    assert decision.update is update
    assert any(reason_fragment in reason for reason in decision.reasons), decision.reasons
    assert [s.name for s in decision.signals] == ["drift_share", "decay", "new_rows", "champion_age_days"]


def test_every_signal_is_reported_with_value_threshold_and_verdict():
    decision = decide_update(signals(drift=0.5, decay=0.1, rows=20_000, age=3), SETTINGS)
    assert [(s.value, s.threshold, s.fired) for s in decision.signals] == [
        (0.5, 0.1, True), (0.1, 0.2, False), (20_000, 10_000, True), (3, 60, False),
    ]
    assert len(decision.reasons) == 2


def test_champion_age_counts_days_of_data_past_the_watermark():
    watermark = pd.Timestamp("2011-01-31T12:00:00Z")
    assert champion_age_days(datetime(2011, 3, 2, 12, tzinfo=timezone.utc), watermark) == 30
    assert champion_age_days(datetime(2011, 1, 1, tzinfo=timezone.utc), watermark) == 0  # an older batch
    assert champion_age_days(None, watermark) == 0


@pytest.mark.parametrize(
    ("challenger", "champion", "promote", "reason_fragment"),
    [
        (0.04, None, False, "below the minimum"),
        (0.05, None, True, "first champion"),
        (0.30, 0.28, True, "+0.0200"),
        (0.30, 0.29, False, "does not beat"),  # a gain of exactly min_improvement is not enough
        (0.30, 0.30, False, "does not beat"),
        (0.20, 0.30, False, "-0.1000"),
        (0.04, 0.01, False, "below the minimum"),  # better than a broken champion is not enough
    ],
)
def test_promotion_verdict(challenger, champion, promote, reason_fragment):
    verdict = promotion_verdict(challenger, champion, SETTINGS)
    assert verdict.promote is promote
    assert any(reason_fragment in reason for reason in verdict.reasons), verdict.reasons
