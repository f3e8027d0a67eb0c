"""The funnel shop: a deterministic event stream whose views and baskets foretell purchases.

Risks guarded: a shop that is not reproducible by seed; a funnel so far from real shops' that
conclusions about training on views do not carry over; purchases with no view or basket before
them; abandoned baskets that never come back (then views carry no intent across weeks); drift
or bad rows that are not there; an export that drifts from its documented format or mapping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from data_checks.sources.funnel import (
    ACTIONS,
    EPOCH_S,
    EXPORT_COLUMNS,
    FAR_FUTURE_S,
    MAPPING_PATH,
    PRODUCT_COLUMNS,
    WEEK_S,
    FunnelConfig,
    FunnelShop,
    write_weeks,
)
from data_checks.sources.synthetic import CATEGORIES

SMALL = FunnelConfig(n_visitors=300, n_items=150, n_new_items=40)


@pytest.fixture(scope="module")
def default_weeks() -> list[pd.DataFrame]:
    shop = FunnelShop(0)
    return [shop.week(w) for w in range(4)]


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path):
    first = write_weeks(tmp_path / "a", range(3), seed=3, drift_from_week=2, config=SMALL)
    again = write_weeks(tmp_path / "b", range(3), seed=3, drift_from_week=2, config=SMALL)
    other = write_weeks(tmp_path / "c", range(3), seed=4, drift_from_week=2, config=SMALL)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert first[-1].read_bytes() != other[-1].read_bytes()
    # A week does not depend on which weeks were asked for before it.
    assert FunnelShop(3, SMALL).week(2, 2).equals(pd.read_csv(first[-1], dtype={"ts": "int64"}))


def test_funnel_ratios_at_the_default_size(default_weeks):
    # Real shops: a few baskets and fewer purchases per hundred page views.
    for frame in default_weeks:
        counts = frame["action"].value_counts()
        views = counts["pageview"]
        assert 15_000 <= len(frame) <= 30_000
        assert 10 <= 100 * counts["basket"] / views <= 15
        assert 3 <= 100 * counts["buy"] / views <= 5


def test_events_are_in_the_week_and_in_funnel_order_within_a_session(default_weeks):
    for week, frame in enumerate(default_weeks):
        assert frame["ts"].between(EPOCH_S + week * WEEK_S, EPOCH_S + (week + 1) * WEEK_S - 1).all()
        assert frame["ts"].is_monotonic_increasing
        weekday = pd.to_datetime(frame["ts"], unit="s").dt.weekday
        assert weekday.isin([5, 6]).mean() < 2 / 7  # quieter at the weekend
        # Every basket follows a view of its item in its session, every buy follows a basket
        # (repeat buys and returns included: they too are view, basket, buy sessions).
        first = frame.groupby(["session", "sku", "action"])["ts"].min().unstack("action")
        baskets, buys = first[first["basket"].notna()], first[first["buy"].notna()]
        assert (baskets["pageview"] < baskets["basket"]).all()
        assert (buys["basket"] < buys["buy"]).all()


def _carried_over_share(shop: FunnelShop, weeks: range) -> float:
    """Share of week w+1's purchases whose item the visitor basketed, but did not buy, in week w."""
    shares = []
    for week in weeks:
        this, following = shop.week(week), shop.week(week + 1)
        by_action = {a: set(zip(this.loc[this["action"] == a, "visitor"], this.loc[this["action"] == a, "sku"])) for a in ("basket", "buy")}
        abandoned = by_action["basket"] - by_action["buy"]
        bought = following[following["action"] == "buy"]
        shares.append(np.mean([pair in abandoned for pair in zip(bought["visitor"], bought["sku"])]))
    return float(np.mean(shares))


def test_abandoned_baskets_come_back_as_later_purchases():
    # About a fifth at the defaults; without returns only chance re-browsing is left.
    assert _carried_over_share(FunnelShop(0), range(3)) >= 0.10
    assert _carried_over_share(FunnelShop(0, FunnelConfig(return_rate=0.0)), range(3)) < 0.05


def test_drift_releases_new_items_that_get_events(tmp_path: Path):
    write_weeks(tmp_path, range(4), drift_from_week=2, config=SMALL)
    before = pd.read_csv(tmp_path / "products.csv")
    after = pd.read_csv(tmp_path / "products-week002.csv")
    assert (len(before), len(after)) == (SMALL.n_items, SMALL.n_items + SMALL.n_new_items)
    new_skus = set(after["sku"]) - set(before["sku"])
    for week in range(4):
        events = pd.read_csv(tmp_path / f"events-week{week:03d}.csv")
        on_new = events[events["sku"].isin(new_skus)]
        if week < 2:
            assert on_new.empty
        else:
            assert set(on_new["action"]) == set(ACTIONS)
            assert on_new["sku"].nunique() > SMALL.n_new_items / 2
            assert len(on_new) > 0.1 * len(events)  # they arrive hot


def test_drift_puts_two_categories_out_of_fashion():
    shop = FunnelShop(0, SMALL)
    department = shop.catalog(include_new_items=True).set_index("sku")["department"]
    faded = department.isin(CATEGORIES[:2])  # the two categories drift puts out of fashion
    share = {drift: shop.week(3, drift).query("action == 'pageview'")["sku"].map(faded).mean() for drift in (None, 2)}
    assert share[2] < share[None] / 2


def test_bad_rows_spoil_exactly_the_share_each_row_one_way():
    clean = FunnelShop(0, SMALL).week(1)
    spoilt = FunnelShop(0, SMALL).week(1, bad_row_share=0.08)
    ts = spoilt["ts"].astype(str)
    kinds = {
        "missing visitor": spoilt["visitor"].isna(),
        "unknown action": ~spoilt["action"].isin(ACTIONS),
        "unparseable ts": ts == "yesterday",
        "far-future ts": ts == str(FAR_FUTURE_S),
    }
    assert all(kind.sum() > 0 for kind in kinds.values()), kinds
    flagged = pd.concat(kinds, axis=1)
    assert (flagged.sum(axis=1) <= 1).all()
    assert flagged.any(axis=1).sum() == int(len(clean) * 0.08)
    assert (spoilt.astype(str) != clean.astype(str)).any(axis=1).sum() == int(len(clean) * 0.08)


def test_export_has_exactly_the_documented_files_and_columns(tmp_path: Path):
    written = write_weeks(tmp_path, range(2), config=SMALL)
    assert [p.name for p in written] == ["funnel_shop.yaml", "products.csv", "events-week000.csv", "events-week001.csv"]
    assert not list(tmp_path.glob("*.tmp"))
    events = pd.read_csv(tmp_path / "events-week000.csv", dtype=str)
    assert tuple(events.columns) == EXPORT_COLUMNS
    assert events["ts"].str.fullmatch(r"\d{10}").all()  # Unix seconds as integer text
    assert events["visitor"].str.fullmatch(r"v\d{5}").all() and events["sku"].str.fullmatch(r"SKU\d{4}").all()
    assert tuple(pd.read_csv(tmp_path / "products.csv").columns) == PRODUCT_COLUMNS
    assert (tmp_path / "funnel_shop.yaml").read_bytes() == MAPPING_PATH.read_bytes()


def test_mapping_file_names_the_export_columns_and_actions(tmp_path: Path):
    mapping = yaml.safe_load(MAPPING_PATH.read_text())
    interactions, catalog = mapping["interactions"], mapping["catalog"]
    assert (mapping["name"], mapping["period"], interactions["time"]["format"]) == ("funnel-shop", "week", "unix_s")
    assert interactions["columns"] == {"user_id": "visitor", "item_id": "sku", "event_time": "ts", "event_type": "action"}
    assert interactions["event_types"] == {"pageview": "view", "basket": "add_to_cart", "buy": "purchase"}
    assert catalog["columns"] == {"item_id": "sku", "title": "name", "category": "department"}
    write_weeks(tmp_path, range(3), drift_from_week=1, config=SMALL)
    assert len(list(tmp_path.glob(interactions["files"]))) == 3
    assert sorted(p.name for p in tmp_path.glob(catalog["files"])) == ["products-week001.csv", "products.csv"]
