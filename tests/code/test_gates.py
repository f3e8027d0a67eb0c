"""The gates as tables of cases. Risk guarded: retraining on noise, or shipping a worse model."""

from __future__ import annotations

import pytest

from flows.settings import Settings
from tasks.gates import decide_update, promotion_verdict

SETTINGS = Settings(drift_share_threshold=0.3, volume_threshold_rows=10_000, min_new_rows=1_000, min_recall=0.05, min_improvement=0.01)


@pytest.mark.parametrize(
    ("drift_share", "new_rows", "update", "reason_fragment"),
    [
        (0.0, 5_000, False, "no signal crossed its threshold"),
        (0.29, 9_999, False, "drift share 0.29 < 0.30"),
        (0.30, 5_000, True, "drift share 0.30 >= 0.30"),  # the threshold itself fires
        (0.0, 10_000, True, "new rows 10,000 >= 10,000"),
        (0.9, 999, False, "only 999 new rows"),  # drift on a sliver of data is not enough
        (0.5, 20_000, True, "drift share 0.50 >= 0.30"),
    ],
)
def test_decide_update(drift_share, new_rows, update, reason_fragment):
    decision = decide_update(drift_share, new_rows, SETTINGS)
    assert decision.update is update
    assert any(reason_fragment in reason for reason in decision.reasons), decision.reasons
    assert {s.name for s in decision.signals} == {"drift_share", "new_rows"}


def test_decide_update_reports_every_fired_signal():
    decision = decide_update(0.5, 20_000, SETTINGS)
    assert [s.fired for s in decision.signals] == [True, True]
    assert len(decision.reasons) == 2


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
