"""Drift on injected and non-injected synthetic batches. Risks guarded: retraining on noise
(false alarms), and a real shift of prices, popularity or the catalog passing unnoticed."""

from __future__ import annotations

import pandas as pd
import pytest

from data_checks.contract import with_contract_columns
from data_checks.drift import ChampionCounts, detect_drift, reference_sample
from data_checks.sources.synthetic import BatchOptions, ShopConfig, SyntheticShop
from models.settings import Settings

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


@pytest.mark.parametrize(
    "options", [BatchOptions(), BatchOptions(new_items=True), BatchOptions(price_shift=True)], ids=["same", "new items", "price shift"],
)
def test_a_large_batch_compared_by_a_sample_of_its_orders_gives_the_same_figures(options):
    shop = SyntheticShop(0, ShopConfig(orders_per_week=4 * ShopConfig().orders_per_week))  # four times the default traffic
    reference, counts = champion_view(shop)
    batch = shop.week(3, options)
    whole = detect_drift(batch, reference, counts, None)
    sampled = detect_drift(batch, reference, counts, None, sample_rows=len(batch) // 2, seed=0)
    assert whole.rows_compared == whole.rows == len(batch)
    assert sampled.rows == len(batch) and len(batch) // 3 < sampled.rows_compared <= len(batch) // 2
    assert sampled.drifted_columns == whole.drifted_columns
    scores = {c.column: c.score for c in whole.columns}
    # Within sampling error of half the orders: basket_size moves most (an order's lines move
    # together).
    for column in sampled.columns:
        assert column.score == pytest.approx(scores[column.column], abs=0.03), column.column
    # The shares of unseen items and users are of the whole batch, not of the sample.
    assert (sampled.unseen_item_share, sampled.unseen_user_share) == (whole.unseen_item_share, whole.unseen_user_share)


def test_decay_scores_a_fixed_sample_of_a_large_batchs_users():
    from models.evaluate import user_sample as hash_sample

    users = pd.Index([f"u{i}" for i in range(10_000)])
    picked = hash_sample(users, 1_000)
    assert len(picked) == 1_000 and picked.isin(users).all() and not picked.duplicated().any()
    assert set(hash_sample(users[::-1], 1_000)) == set(picked)  # the batch's row order does not matter
    assert hash_sample(users[:500], 1_000).equals(users[:500])  # fewer than asked: all of them
    # Not the first names in the batch's order, nor a block of similar names.
    assert picked.isin(users[:1_000]).mean() < 0.2


def test_a_large_accepted_file_is_sampled_from_arrow_with_the_figures_of_the_whole_frame(tmp_path):
    from data_checks.drift import detect_file_drift

    shop = SyntheticShop(0)
    reference, counts = champion_view(shop)
    batch = with_contract_columns(shop.week(3, BatchOptions(new_items=True)))
    batch.to_parquet(tmp_path / "accepted.parquet", index=False)
    in_memory = detect_drift(batch, reference, counts, None, sample_rows=len(batch) // 2, seed=3)
    from_file = detect_file_drift(tmp_path / "accepted.parquet", reference, counts, None, sample_rows=len(batch) // 2, seed=3)
    assert from_file == in_memory
    assert from_file.rows == len(batch) > from_file.rows_compared and from_file.unseen_item_share > 0
    small = detect_file_drift(tmp_path / "accepted.parquet", reference, counts, None, sample_rows=len(batch), seed=3)
    assert small == detect_drift(batch, reference, counts, None)
