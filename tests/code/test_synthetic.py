"""The synthetic shop: deterministic, in the contract, and its injections do what they say."""

from __future__ import annotations

import pandas as pd
import pandas.testing as pdt

from data_checks.contract import INTERACTION_COLUMNS
from data_checks.sources.synthetic import BatchOptions, SyntheticShop, write_weeks
from tests.conftest import TINY_SHOP


def test_same_seed_same_week_and_other_seed_differs():
    a = SyntheticShop(7, TINY_SHOP).week(3)
    pdt.assert_frame_equal(a, SyntheticShop(7, TINY_SHOP).week(3))
    assert not a.equals(SyntheticShop(8, TINY_SHOP).week(3))
    assert list(a.columns) == [c for c in INTERACTION_COLUMNS if c != "event_type"]  # purchases only: no types


def test_weeks_are_seasonal_and_repeat_purchases_happen():
    week = SyntheticShop(0, TINY_SHOP).week(0)
    weekday_share = week["event_time"].dt.weekday.value_counts(normalize=True)
    assert weekday_share[[5, 6]].sum() < 2 / 7  # quieter at the weekend
    repeats = week.duplicated(["user_id", "item_id"]).mean()
    assert repeats > 0.05


def test_drift_brings_new_items_and_higher_prices():
    shop = SyntheticShop(0, TINY_SHOP)
    before, after = shop.week(1), shop.week(1, BatchOptions.full_drift())
    new_items = set(after["item_id"]) - set(shop.catalog(include_new_items=False)["item_id"])
    assert len(new_items) > 10
    assert after["price"].median() > before["price"].median() * 1.2


def test_bad_rows_and_broken_contract(tmp_path):
    shop = SyntheticShop(0, TINY_SHOP)
    spoiled = shop.week(1, BatchOptions(bad_row_share=0.08))
    assert spoiled["user_id"].isna().sum() > 0
    assert (pd.to_numeric(spoiled["quantity"]) < 0).sum() > 0
    broken = shop.week(1, BatchOptions(break_contract=True))
    assert "item_id" not in broken.columns

    written = write_weeks(tmp_path, range(0, 3), drift_from_week=2, config=TINY_SHOP)
    assert [p.name for p in written] == [
        "catalog-week000.csv", "interactions-week000.csv", "interactions-week001.csv",
        "catalog-week002.csv", "interactions-week002.csv",
    ]
    assert not list(tmp_path.glob("*.tmp"))
