"""The two gates of the workflow, as pure functions of typed signals and settings.

`decide_update` says whether new data is worth a fine-tune; `judge_challenger` says whether a
challenger may replace the champion. Both return every reason, so the decision can be audited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from prefect import task

from models.settings import Settings


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
    decay: float  # relative drop of the champion's primary metric at K on the batch vs its own holdout
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
    checks: list["GateCheck"] = field(default_factory=list)


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
        return UpdateDecision(True, [_describe(s, settings) for s in fired], signals)
    return UpdateDecision(False, ["no signal crossed its threshold: " + "; ".join(_describe(s, settings) for s in signals)], signals)


METRIC_LABELS = {"recall": "Recall", "ndcg": "NDCG", "hit_rate": "HitRate", "mrr": "MRR"}


@dataclass(frozen=True)
class PromotionEvidence:
    """What the gate needs, all on the primary metric: both models scored on the same slices."""

    metric: str  # recall | ndcg | hit_rate | mrr
    k: int
    challenger: float  # on the newest held-out slice
    champion: float | None  # None: there is no champion yet
    gain_interval: tuple[float, float] | None = None  # bootstrap interval of challenger - champion
    historical_challenger: float | None = None  # on the historical slice (forgetting)
    historical_champion: float | None = None
    # Started from the champion's weights. Only then is the historical slice (rows the champion
    # trained on) a measure of forgetting: a model trained from scratch or elsewhere did not
    # learn them from the champion, and scores below its in-sample fit without forgetting anything.
    warm_started: bool = True

    @property
    def label(self) -> str:
        return f"{METRIC_LABELS[self.metric]}@{self.k}"


@dataclass(frozen=True)
class GateCheck:
    name: str  # value | change | forgetting | significance
    passed: bool
    reason: str


def judge_challenger(evidence: PromotionEvidence, settings: Settings) -> PromotionVerdict:
    """Promote iff every check passes: the value threshold (the challenger reaches
    ``min_primary_metric``), the change thresholds (it beats the champion by more than
    ``min_improvement`` absolute and ``min_relative_improvement`` relative), the forgetting
    tolerance (it loses at most ``max_forgetting`` on the historical slice) and, when
    ``require_significant_gain``, a gain interval above zero. Every check is reported."""
    checks = [_value_check(evidence, settings)]
    if evidence.champion is None:
        checks.append(GateCheck("change", True, "first champion: nothing to compare with"))
    else:
        checks.append(_change_check(evidence, settings))
        if evidence.historical_challenger is not None and evidence.historical_champion is not None:
            checks.append(_forgetting_check(evidence, settings) if evidence.warm_started else _not_warm_started(evidence))
        if settings.require_significant_gain:
            checks.append(_significance_check(evidence))
    promote = all(c.passed for c in checks)
    return PromotionVerdict(promote, [c.reason for c in checks], checks)


# The epsilon keeps a value exactly at a threshold (0.30 - 0.29 in floats) on the strict side.
_EPS = 1e-9


def _value_check(e: PromotionEvidence, settings: Settings) -> GateCheck:
    passed = e.challenger >= settings.min_primary_metric - _EPS
    relation = "reaches" if passed else "is below"
    return GateCheck(
        "value", passed,
        f"challenger {e.label} ({settings.target_event} events) {e.challenger:.4f} {relation} the minimum {settings.min_primary_metric:.4f}",
    )


def _change_check(e: PromotionEvidence, settings: Settings) -> GateCheck:
    gain = e.challenger - e.champion
    relative = gain / e.champion if e.champion > 0 else (float("inf") if gain > 0 else 0.0)
    passed = gain > settings.min_improvement + _EPS and relative > settings.min_relative_improvement + _EPS
    verb = "beats" if passed else "does not beat"
    return GateCheck(
        "change", passed,
        f"challenger {e.label} {e.challenger:.4f} vs champion {e.champion:.4f} ({gain:+.4f}, {relative:+.1%}) {verb} "
        f"the required gain of more than {settings.min_improvement:+.4f} and {settings.min_relative_improvement:+.1%}",
    )


def _forgetting_check(e: PromotionEvidence, settings: Settings) -> GateCheck:
    loss = e.historical_champion - e.historical_challenger
    passed = loss <= settings.max_forgetting + _EPS
    verdict = "within" if passed else "beyond"
    return GateCheck(
        "forgetting", passed,
        f"historical slice: challenger {e.label} {e.historical_challenger:.4f} vs champion {e.historical_champion:.4f} "
        f"(forgot {loss:+.4f}), {verdict} the tolerance of {settings.max_forgetting:.4f}",
    )


def _not_warm_started(e: PromotionEvidence) -> GateCheck:
    return GateCheck(
        "forgetting", True,
        f"historical slice: challenger {e.label} {e.historical_challenger:.4f} vs champion {e.historical_champion:.4f}, "
        "not a forgetting check: the challenger did not start from the champion (the slice is the champion's training data)",
    )


def _significance_check(e: PromotionEvidence) -> GateCheck:
    if e.gain_interval is None:
        return GateCheck("significance", False, "no interval for the gain: cannot show it is significant")
    low, high = e.gain_interval
    passed = low > 0
    verdict = "above" if passed else "not above"
    return GateCheck("significance", passed, f"gain interval [{low:+.4f}, {high:+.4f}] is {verdict} zero")


def _describe(signal: Signal, settings: Settings) -> str:
    relation = ">=" if signal.fired else "<"
    if signal.name == "new_rows":
        return f"new rows {signal.value:,.0f} {relation} {signal.threshold:,.0f}"
    if signal.name == "champion_age_days":
        return f"champion age {signal.value:.0f} days {relation} {signal.threshold:.0f}"
    if signal.name == "decay":
        return f"{METRIC_LABELS[settings.primary_metric]} decay {signal.value:.0%} {relation} {signal.threshold:.0%}"
    return f"drift share {signal.value:.2f} {relation} {signal.threshold:.2f}"


def champion_age_days(batch_until: datetime | None, trained_until: pd.Timestamp) -> float:
    """Days of data between the champion's watermark and the batch's newest event (0 if unknown)."""
    if batch_until is None:
        return 0.0
    return max(0.0, (pd.Timestamp(batch_until) - trained_until).total_seconds() / 86_400)


# The policy as Prefect tasks under its own names; the pure functions stay at ``.fn``.
decide_update = task(name="decide-update")(decide_update)
judge_challenger = task(name="judge-challenger")(judge_challenger)
