"""The two gates of the workflow, as pure functions of typed signals and settings.

`decide_update` says whether new data is worth a fine-tune; `promotion_verdict` says whether a
challenger may replace the champion. Both return every reason, so the decision can be audited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from prefect import task

from flows.settings import Settings


@dataclass(frozen=True)
class Signal:
    name: str
    value: float
    threshold: float
    fired: bool


@dataclass(frozen=True)
class UpdateSignals:
    """What the monitor measured on a batch, before any threshold is applied."""

    drift_share: float  # share of monitored columns that drifted against the champion's reference
    decay: float  # relative drop of the champion's Recall@K on the batch vs its own holdout
    new_rows: int  # accepted rows since the champion's training watermark, this batch included
    champion_age_days: float  # newest event of the batch minus the newest the champion trained on


@dataclass(frozen=True)
class UpdateDecision:
    update: bool
    reasons: list[str]
    signals: list[Signal] = field(default_factory=list)


@dataclass(frozen=True)
class PromotionVerdict:
    promote: bool
    reasons: list[str]


def decide_update(measured: UpdateSignals, settings: Settings) -> UpdateDecision:
    """Update iff drift, performance decay, the rows accumulated since the champion's training or
    the champion's age crosses its threshold, and never on fewer than ``min_new_rows`` new rows."""
    checks = [
        ("drift_share", measured.drift_share, settings.drift_share_threshold),
        ("decay", measured.decay, settings.decay_threshold),
        ("new_rows", measured.new_rows, settings.volume_threshold_rows),
        ("champion_age_days", measured.champion_age_days, settings.max_champion_age_days),
    ]
    signals = [Signal(name, float(value), float(threshold), value >= threshold) for name, value, threshold in checks]
    if measured.new_rows < settings.min_new_rows:
        reason = f"only {measured.new_rows:,} new rows, fewer than the minimum of {settings.min_new_rows:,}"
        return UpdateDecision(False, [reason], signals)
    fired = [s for s in signals if s.fired]
    if fired:
        return UpdateDecision(True, [_describe(s) for s in fired], signals)
    return UpdateDecision(False, ["no signal crossed its threshold: " + "; ".join(_describe(s) for s in signals)], signals)


def promotion_verdict(challenger_recall: float, champion_recall: float | None, settings: Settings) -> PromotionVerdict:
    """A challenger replaces the champion only when it reaches the minimum quality and beats the
    champion on the same slice by more than ``min_improvement``."""
    k = settings.eval_k
    if challenger_recall < settings.min_recall:
        return PromotionVerdict(
            False, [f"challenger Recall@{k} {challenger_recall:.4f} is below the minimum {settings.min_recall:.4f}"]
        )
    if champion_recall is None:
        return PromotionVerdict(True, [f"first champion: Recall@{k} {challenger_recall:.4f} reaches the minimum"])
    gain = challenger_recall - champion_recall
    comparison = f"challenger Recall@{k} {challenger_recall:.4f} vs champion {champion_recall:.4f} ({gain:+.4f})"
    # The epsilon keeps a gain of exactly min_improvement (0.30 - 0.29 in floats) from passing.
    if gain > settings.min_improvement + 1e-9:
        return PromotionVerdict(True, [f"{comparison} beats the required gain of {settings.min_improvement:+.4f}"])
    return PromotionVerdict(False, [f"{comparison} does not beat the required gain of {settings.min_improvement:+.4f}"])


def _describe(signal: Signal) -> str:
    relation = ">=" if signal.fired else "<"
    if signal.name == "new_rows":
        return f"new rows {signal.value:,.0f} {relation} {signal.threshold:,.0f}"
    if signal.name == "champion_age_days":
        return f"champion age {signal.value:.0f} days {relation} {signal.threshold:.0f}"
    if signal.name == "decay":
        return f"Recall decay {signal.value:.0%} {relation} {signal.threshold:.0%}"
    return f"drift share {signal.value:.2f} {relation} {signal.threshold:.2f}"


def champion_age_days(batch_until: datetime | None, trained_until: pd.Timestamp) -> float:
    """Days of data between the champion's watermark and the batch's newest event (0 if unknown)."""
    if batch_until is None:
        return 0.0
    return max(0.0, (pd.Timestamp(batch_until) - trained_until).total_seconds() / 86_400)


decide = task(name="decide-update")(decide_update)
judge_challenger = task(name="judge-challenger")(promotion_verdict)
