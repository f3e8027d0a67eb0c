"""Drift on injected and non-injected synthetic batches. Risks guarded: retraining on noise
(false alarms), and a real shift of prices, popularity or the catalog passing unnoticed."""

from __future__ import annotations

import pandas as pd
import pytest

from data_checks.drift import ChampionCounts, detect_drift, reference_sample
from data_checks.sources.synthetic import BatchOptions, SyntheticShop
from flows.settings import Settings

THRESHOLD = Settings().drift_share_threshold
SEEDS = [0, 1, 2]


def champion_view(shop: SyntheticShop) -> tuple[pd.DataFrame, ChampionCounts]:
    """A champion trained on two weeks: its reference sample and its counts."""
    history = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    counts = ChampionCounts(
        history["item_id"].value_counts(), history["user_id"].value_counts(),
        shop.catalog(include_new_items=True).set_index("item_id")["category"],
    )
    return reference_sample(history, 20_000, seed=0), counts


@pytest.mark.parametrize("seed", SEEDS)
def test_a_same_distribution_week_does_not_drift(seed, tmp_path):
    shop = SyntheticShop(seed)
    reference, counts = champion_view(shop)
    result = detect_drift(shop.week(3), reference, counts, tmp_path / "report.html")
    assert result.drift_share < THRESHOLD, result.drifted_columns
    assert result.unseen_item_share < 0.01
    assert (tmp_path / "report.html").stat().st_size > 10_000  # Evidently's HTML report was written


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("options", "column"),
    [
        (BatchOptions(new_items=True), "item_known"),
        (BatchOptions(popularity_shift=True), "category"),
        (BatchOptions(price_shift=True), "price"),
    ],
    ids=["new items", "popularity shift", "price shift"],
)
def test_each_injected_shift_is_detected_where_it_happened(seed, options, column):
    shop = SyntheticShop(seed)
    reference, counts = champion_view(shop)
    result = detect_drift(shop.week(3, options), reference, counts, None)
    assert result.drift_share >= THRESHOLD
    assert column in result.drifted_columns
    assert {c.column for c in result.columns} == {
        "price", "quantity", "hour", "basket_size", "log_popularity_rank", "weekday", "country", "item_known", "category",
    }
