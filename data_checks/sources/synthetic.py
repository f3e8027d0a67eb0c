"""A deterministic synthetic shop: the embedded default source of freshrec.

Users with stable tastes buy from a long-tailed catalog, repeat earlier purchases and shop less
at the weekend. Each week is one landing file in the data contract. Drift (new items, a shift of
popularity, a price shift) and bad rows can be injected from a chosen week on, so the demo and
the tests exercise every branch of the workflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_checks.contract import CATALOG_PREFIX, INTERACTIONS_PREFIX
from data_checks.sources import write_landing_csv

EPOCH = pd.Timestamp("2026-01-05", tz="UTC")  # a Monday: weeks start on Mondays
COUNTRIES = np.array(["United Kingdom", "Germany", "France", "Netherlands", "Spain", "Norway"])
COUNTRY_WEIGHTS = np.array([0.70, 0.10, 0.08, 0.05, 0.04, 0.03])
CATEGORIES = np.array(["kitchen", "garden", "toys", "stationery", "lighting", "textiles", "party"])
ADJECTIVES = np.array(["vintage", "retro", "pastel", "rustic", "glass", "wooden", "enamel", "spotty"])
NOUNS = {
    "kitchen": ["mug", "teapot", "cake tin", "jam jar", "apron"],
    "garden": ["watering can", "bird feeder", "plant pot", "gnome", "lantern"],
    "toys": ["spinning top", "doll", "jigsaw", "yo-yo", "skipping rope"],
    "stationery": ["notebook", "pencil case", "wrapping paper", "gift tag", "card"],
    "lighting": ["t-light holder", "fairy lights", "candle", "lamp", "star light"],
    "textiles": ["tote bag", "cushion cover", "tea towel", "bunting", "blanket"],
    "party": ["paper cups", "napkins", "party bag", "balloons", "cake stand"],
}
# Weekday purchase weights, Monday first: a retailer that is quiet at the weekend.
WEEKDAY_WEIGHTS = np.array([1.0, 1.1, 1.1, 1.0, 0.9, 0.35, 0.25])


@dataclass(frozen=True)
class ShopConfig:
    """Sizes of the synthetic shop; the defaults give the demo about 9.5k rows a week."""

    n_users: int = 1_500
    n_items: int = 600
    n_new_items: int = 120  # released when drift starts
    orders_per_week: int = 2_000
    mean_basket: float = 5.0
    repeat_share: float = 0.3  # share of basket lines that re-buy an earlier purchase
    taste_strength: float = 4.0  # how strongly a user prefers their favourite categories


@dataclass(frozen=True)
class BatchOptions:
    """What to inject into one week's file."""

    new_items: bool = False  # the n_new_items released items arrive, and sell well
    popularity_shift: bool = False  # two categories fall out of fashion
    price_shift: bool = False  # prices rise by a third
    bad_row_share: float = 0.0
    break_contract: bool = False  # rename a required column: the whole batch must be rejected

    @classmethod
    def full_drift(cls, **others) -> "BatchOptions":
        return cls(new_items=True, popularity_shift=True, price_shift=True, **others)


class SyntheticShop:
    """A shop whose world (users, items, tastes) is fixed by the seed."""

    def __init__(self, seed: int = 0, config: ShopConfig = ShopConfig()) -> None:
        self.seed = seed
        self.config = config
        rng = np.random.default_rng(seed)
        n_all = config.n_items + config.n_new_items
        self.item_ids = np.array([f"P{i:05d}" for i in range(n_all)])
        self.item_category = rng.integers(0, len(CATEGORIES), n_all)
        self.item_price = np.round(np.exp(rng.normal(1.0, 0.6, n_all)), 2)
        # Long tail: Zipf-like base popularity over a random order of the items.
        ranks = rng.permutation(n_all) + 1
        self.item_popularity = 1.0 / ranks**0.9
        self.item_titles = np.array(
            [
                f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]} "
                f"{rng.choice(NOUNS[CATEGORIES[c]])}"
                for c in self.item_category
            ]
        )
        self.user_ids = np.array([f"{10000 + u}" for u in range(config.n_users)])
        self.user_country = rng.choice(len(COUNTRIES), config.n_users, p=COUNTRY_WEIGHTS)
        self.user_activity = rng.gamma(1.2, 1.0, config.n_users)
        self.user_taste = rng.dirichlet(np.full(len(CATEGORIES), 0.3), config.n_users)

    def catalog(self, include_new_items: bool) -> pd.DataFrame:
        n = len(self.item_ids) if include_new_items else self.config.n_items
        return pd.DataFrame(
            {
                "item_id": self.item_ids[:n],
                "title": self.item_titles[:n],
                "category": CATEGORIES[self.item_category[:n]],
                "price": self.item_price[:n],
            }
        )

    def week(self, week: int, options: BatchOptions = BatchOptions()) -> pd.DataFrame:
        """Interactions of one week, in the data contract."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, week])
        n_items = len(self.item_ids) if options.new_items else cfg.n_items
        popularity = self.item_popularity[:n_items].copy()
        prices = self.item_price[:n_items].copy()
        if options.new_items:  # new items arrive hot
            popularity[cfg.n_items :] = popularity[: cfg.n_items].max() * 0.5
        if options.popularity_shift:  # two categories fall out of fashion
            popularity[np.isin(self.item_category[:n_items], [0, 1])] *= 0.1
        if options.price_shift:
            prices = np.round(prices * 1.35, 2)

        n_orders = cfg.orders_per_week
        buyers = rng.choice(cfg.n_users, n_orders, p=self.user_activity / self.user_activity.sum())
        days = rng.choice(7, n_orders, p=WEEKDAY_WEIGHTS / WEEKDAY_WEIGHTS.sum())
        seconds = rng.integers(8 * 3600, 20 * 3600, n_orders)
        order_times = EPOCH + pd.to_timedelta(week * 7 + days, unit="D") + pd.to_timedelta(seconds, unit="s")
        basket_sizes = 1 + rng.poisson(cfg.mean_basket - 1, n_orders)

        rows_user, rows_item, rows_order, rows_time = [], [], [], []
        for o in range(n_orders):
            u = buyers[o]
            # Taste: popularity tilted towards the user's favourite categories.
            weights = popularity * (self.user_taste[u, self.item_category[:n_items]] * cfg.taste_strength + 0.05)
            weights /= weights.sum()
            size = basket_sizes[o]
            items = rng.choice(n_items, size, p=weights)
            # Repeat purchases: a user's own favourites come back (stable by user).
            n_repeat = rng.binomial(size, cfg.repeat_share)
            if n_repeat:
                favourites = np.random.default_rng([self.seed, 1_000_000 + u]).choice(
                    cfg.n_items, 8, p=self.item_popularity[: cfg.n_items] / self.item_popularity[: cfg.n_items].sum()
                )
                items[:n_repeat] = rng.choice(favourites, n_repeat)
            # One line per item in a basket, as a shop's order lines are.
            items = pd.unique(items)
            size = len(items)
            rows_user.extend([u] * size)
            rows_item.extend(items.tolist())
            rows_order.extend([f"{week:03d}{o:05d}"] * size)
            rows_time.extend([order_times[o]] * size)

        users = np.array(rows_user)
        items = np.array(rows_item)
        frame = pd.DataFrame(
            {
                "user_id": self.user_ids[users],
                "item_id": self.item_ids[items],
                "event_time": pd.DatetimeIndex(rows_time).tz_convert("UTC"),
                "quantity": 1 + rng.poisson(2.0, len(users)),
                "price": prices[items],
                "order_id": np.array(rows_order),
                "country": COUNTRIES[self.user_country[users]],
            }
        ).sort_values("event_time", kind="stable", ignore_index=True)
        if options.bad_row_share > 0:
            frame = _inject_bad_rows(frame, options.bad_row_share, rng)
        if options.break_contract:
            frame = frame.rename(columns={"item_id": "sku"})
        return frame


def _inject_bad_rows(frame: pd.DataFrame, share: float, rng: np.random.Generator) -> pd.DataFrame:
    """Spoil a share of rows the ways real feeds spoil them (each row one way)."""
    frame = frame.astype({"user_id": object, "quantity": object, "price": object})
    bad = rng.choice(len(frame), int(len(frame) * share), replace=False)
    kinds = np.array_split(bad, 4)
    frame.loc[kinds[0], "user_id"] = None  # guest checkout, no customer id
    frame.loc[kinds[1], "quantity"] = -1  # a cancellation leaking into the order feed
    frame.loc[kinds[2], "price"] = -5.0  # a bad-debt adjustment
    frame.loc[kinds[3], "event_time"] = pd.Timestamp("2099-01-01", tz="UTC")  # a clock gone wrong
    return frame


def write_weeks(
    landing_dir: Path,
    weeks: range,
    seed: int = 0,
    drift_from_week: int | None = None,
    bad_rows_weeks: tuple[int, ...] = (),
    bad_row_share: float = 0.05,
    broken_weeks: tuple[int, ...] = (),
    config: ShopConfig = ShopConfig(),
) -> list[Path]:
    """Write one interactions file per week (and the catalog) into ``landing_dir``.

    Files are written under a temporary name and renamed, so a reader never sees half a file.
    """
    shop = SyntheticShop(seed, config)
    landing_dir.mkdir(parents=True, exist_ok=True)
    written = []
    drift_seen = False
    for week in weeks:
        drift = drift_from_week is not None and week >= drift_from_week
        if drift and not drift_seen:
            written.append(write_landing_csv(shop.catalog(include_new_items=True), landing_dir / f"{CATALOG_PREFIX}-week{week:03d}.csv"))
            drift_seen = True
        if week == weeks.start and not drift:
            written.append(write_landing_csv(shop.catalog(include_new_items=False), landing_dir / f"{CATALOG_PREFIX}-week{week:03d}.csv"))
        options = BatchOptions(
            new_items=drift,
            popularity_shift=drift,
            price_shift=drift,
            bad_row_share=bad_row_share if week in bad_rows_weeks else 0.0,
            break_contract=week in broken_weeks,
        )
        written.append(write_landing_csv(shop.week(week, options), landing_dir / f"{INTERACTIONS_PREFIX}-week{week:03d}.csv"))
    return written
