"""A deterministic synthetic event-stream shop: page views, baskets and purchases.

Visitors with stable tastes browse a long-tailed catalog in sessions; a few views become
baskets and a few baskets become purchases, in the session or, after an abandoned basket, in a
later week. That carried-over intent, plus repeat buys of each visitor's favourites, is what
lets views and baskets predict future purchases better than the sparse purchases alone.

The export is in the shop's own format (``visitor, sku, ts, action, session``); it reaches the
data contract through ``funnel_shop.yaml``, which ``write_weeks`` copies beside the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from data_checks.sources import write_landing_csv
from data_checks.sources.synthetic import ADJECTIVES, CATEGORIES, EPOCH, NOUNS, WEEKDAY_WEIGHTS
from models.files import temporary_beside

MAPPING_PATH = Path(__file__).with_name("funnel_shop.yaml")
EXPORT_COLUMNS = ("visitor", "sku", "ts", "action", "session")
PRODUCT_COLUMNS = ("sku", "name", "department")
ACTIONS = np.array(["pageview", "basket", "buy"])  # in funnel order: codes 0, 1, 2
EPOCH_S = int(EPOCH.timestamp())
WEEK_S = 7 * 86_400
FAR_FUTURE_S = 4_102_444_800  # 2100-01-01: a device clock gone wrong
MAX_VIEWS = 50  # views in one session
HISTORY_WEEKS = 1_000  # weeks before week 0 exist too (seeds must not be negative)


@dataclass(frozen=True)
class FunnelConfig:
    """Sizes and rates of the funnel shop; the defaults give about 22k event rows a week
    (pageview : basket : buy near 100 : 12 : 4)."""

    n_visitors: int = 1_500
    n_items: int = 600
    n_new_items: int = 120  # released when drift starts
    sessions_per_week: float = 1.2  # per unit of activity (activity has mean 1.2)
    mean_views: float = 10.0  # page views per browsing session, over-dispersed
    explore_share: float = 0.15  # views of a random item, whatever the taste
    taste_strength: float = 4.0  # how strongly a visitor prefers their favourite categories
    cart_rate: float = 0.15  # basket probability of a view in the visitor's favourite category
    cart_floor: float = 0.2  # ... relative to that, of a view in a category they do not care for
    buy_in_session: float = 0.2  # a basket bought in the session; the rest is abandoned
    return_rate: float = 0.15  # an abandoned basket bought in a later week
    return_delay_weights: tuple[float, ...] = (0.5, 0.25, 0.15, 0.1)  # weeks 1, 2, 3, 4 later
    repeat_rate: float = 0.08  # repeat buys of a favourite per week, per unit of activity
    n_favourites: int = 5


class _Week(NamedTuple):
    """One week's browsing sessions, before intent from earlier weeks is added."""

    visitor: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    action: np.ndarray
    session: np.ndarray  # session number within the week
    n_sessions: int
    returns: tuple[np.ndarray, np.ndarray, np.ndarray]  # abandoned baskets that come back: visitor, item, delay


class FunnelShop:
    """An event-stream shop whose world (visitors, items, tastes, favourites) is fixed by the seed.

    ``week(w)`` depends only on the seed, ``w`` and the drift week: each week's sessions are drawn
    on their own, and an abandoned basket draws once, in its own week, whether and when it returns.
    """

    def __init__(self, seed: int = 0, config: FunnelConfig = FunnelConfig()) -> None:
        self.seed = seed
        self.config = config
        rng = np.random.default_rng(seed)
        n_all = config.n_items + config.n_new_items
        self.skus = np.array([f"SKU{i:04d}" for i in range(n_all)])
        self.item_category = rng.integers(0, len(CATEGORIES), n_all)
        ranks = rng.permutation(n_all) + 1
        self.item_popularity = 1.0 / ranks**0.9  # Zipf-like long tail
        self.item_names = np.array(
            [f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]} {rng.choice(NOUNS[CATEGORIES[c]])}" for c in self.item_category]
        )
        self.visitors = np.array([f"v{v:05d}" for v in range(config.n_visitors)])
        self.activity = rng.gamma(1.2, 1.0, config.n_visitors)
        self.taste = rng.dirichlet(np.full(len(CATEGORIES), 0.3), config.n_visitors)
        self.affinity = self.taste / self.taste.max(axis=1, keepdims=True)  # 1 for the favourite category
        owners = np.repeat(np.arange(config.n_visitors), config.n_favourites)
        self.favourites = self._draw_items(owners, self._popularity(False), rng).reshape(config.n_visitors, -1)
        self._weeks: dict[tuple[int, bool], _Week] = {}

    def catalog(self, include_new_items: bool) -> pd.DataFrame:
        """The products file: the released items."""
        n = len(self.skus) if include_new_items else self.config.n_items
        return pd.DataFrame({"sku": self.skus[:n], "name": self.item_names[:n], "department": CATEGORIES[self.item_category[:n]]})

    def week(self, week: int, drift_from_week: int | None = None, bad_row_share: float = 0.0) -> pd.DataFrame:
        """Events of one week in the shop's export format, in time order.

        Drift (new items that sell well, two categories out of fashion) holds from ``drift_from_week``
        on; ``bad_row_share`` of the rows are then spoilt, each one way.
        """
        cfg = self.config
        drifted = drift_from_week is not None and week >= drift_from_week
        rng = np.random.default_rng([self.seed, week + HISTORY_WEEKS, 1])
        base = self._browse(week, drifted)
        # Carried-over intent: baskets abandoned in the last weeks whose return falls in this one
        # (the shop traded before the first exported week, so week 0 has returns too).
        came_back = []
        for delay in range(1, len(cfg.return_delay_weights) + 1):
            earlier = self._browse(week - delay, drift_from_week is not None and week - delay >= drift_from_week)
            visitor, item, due = earlier.returns
            came_back.append((visitor[due == delay], item[due == delay]))
        n_repeats = rng.poisson(self.activity * cfg.repeat_rate)
        repeat_visitor = np.repeat(np.arange(cfg.n_visitors), n_repeats)
        repeat_item = self.favourites[repeat_visitor, rng.integers(0, cfg.n_favourites, len(repeat_visitor))]
        visitor = np.concatenate([v for v, _ in came_back] + [repeat_visitor])
        item = np.concatenate([i for _, i in came_back] + [repeat_item])
        # Each return or repeat is a short session of its own: view, basket, buy.
        n = len(visitor)
        view_ts = self._session_starts(week, n, rng)
        basket_ts = view_ts + rng.integers(5, 60, n)
        buy_ts = basket_ts + rng.integers(30, 300, n)
        session = base.n_sessions + np.arange(n)
        frame = pd.DataFrame(
            {
                "visitor": np.concatenate([base.visitor, np.tile(visitor, 3)]),
                "item": np.concatenate([base.item, np.tile(item, 3)]),
                "ts": np.concatenate([base.ts, view_ts, basket_ts, buy_ts]),
                "action": np.concatenate([base.action, np.repeat([0, 1, 2], n)]),
                "session": np.concatenate([base.session, np.tile(session, 3)]),
            }
        )
        frame = frame.iloc[np.lexsort((frame["action"], frame["session"], frame["ts"]))]
        export = pd.DataFrame(
            {
                "visitor": self.visitors[frame["visitor"]],
                "sku": self.skus[frame["item"]],
                "ts": frame["ts"].to_numpy(),
                "action": ACTIONS[frame["action"]],
                "session": np.char.add(f"S{week:03d}-", np.char.zfill(frame["session"].to_numpy().astype(str), 5)),
            }
        )
        if bad_row_share > 0:
            export = _inject_bad_rows(export, bad_row_share, rng)
        return export

    def _popularity(self, drifted: bool) -> np.ndarray:
        """Popularity of the released items."""
        cfg = self.config
        if not drifted:
            return self.item_popularity[: cfg.n_items].copy()
        popularity = self.item_popularity.copy()
        popularity[cfg.n_items :] = popularity[: cfg.n_items].max() * 0.5  # new items arrive hot
        popularity[np.isin(self.item_category, [0, 1])] *= 0.1  # two categories fall out of fashion
        return popularity

    def _draw_items(self, visitors: np.ndarray, popularity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per visitor given, drawn from popularity x taste, with some exploration.

        Sampled in two stages (category by taste x the category's popularity mass, then item by
        popularity within it), which is the same distribution without a row per visitor and item.
        """
        n, cfg = len(visitors), self.config
        category = self.item_category[: len(popularity)]
        mass = np.bincount(category, weights=popularity, minlength=len(CATEGORIES))
        cdf = np.cumsum(mass * (self.taste[visitors] * cfg.taste_strength + 0.05), axis=1)
        chosen = np.minimum((rng.random(n)[:, None] * cdf[:, -1:] > cdf).sum(axis=1), len(CATEGORIES) - 1)
        within = rng.random(n)
        items = np.zeros(n, dtype=np.int64)
        for c in range(len(CATEGORIES)):
            members, rows = np.flatnonzero(category == c), chosen == c
            if len(members) and rows.any():
                item_cdf = np.cumsum(popularity[members])
                picks = np.searchsorted(item_cdf, within[rows] * item_cdf[-1], side="right")
                items[rows] = members[np.minimum(picks, len(members) - 1)]
        explore = rng.random(n) < cfg.explore_share
        items[explore] = rng.integers(0, len(popularity), explore.sum())
        return items

    def _session_starts(self, week: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Unix seconds of ``n`` session starts: a weekday by WEEKDAY_WEIGHTS, 07:00 to 21:00."""
        day = rng.choice(7, n, p=WEEKDAY_WEIGHTS / WEEKDAY_WEIGHTS.sum())
        return EPOCH_S + week * WEEK_S + day * 86_400 + rng.integers(7 * 3600, 21 * 3600, n)

    def _browse(self, week: int, drifted: bool) -> _Week:
        """The week's browsing sessions: views, the baskets they lead to, in-session purchases,
        and for each abandoned basket whether (and how many weeks later) it is bought."""
        key = (week, drifted)
        if key in self._weeks:
            return self._weeks[key]
        cfg = self.config
        rng = np.random.default_rng([self.seed, week + HISTORY_WEEKS, 0])
        popularity = self._popularity(drifted)
        n_sessions = rng.poisson(self.activity * cfg.sessions_per_week)
        session_visitor = np.repeat(np.arange(cfg.n_visitors), n_sessions)
        n = len(session_visitor)
        # Over-dispersed session lengths: many short visits, a few long ones.
        # Capped so that a session started at 21:00 on Sunday ends within the week.
        n_views = np.minimum(1 + rng.poisson(rng.gamma(1.5, (cfg.mean_views - 1) / 1.5, n)), MAX_VIEWS)
        session = np.repeat(np.arange(n), n_views)
        item = self._draw_items(session_visitor[session], popularity, rng)
        first = np.sort(np.unique(session * len(popularity) + item, return_index=True)[1])  # an item once per session
        session, item = session[first], item[first]
        visitor = session_visitor[session]

        gaps = np.cumsum(rng.integers(10, 120, len(item)))
        session_first = np.searchsorted(session, session)
        view_ts = self._session_starts(week, n, rng)[session] + gaps - gaps[session_first]
        p_cart = cfg.cart_rate * (cfg.cart_floor + (1 - cfg.cart_floor) * self.affinity[visitor, self.item_category[item]])
        carted = rng.random(len(item)) < p_cart
        bought = carted & (rng.random(len(item)) < cfg.buy_in_session)
        basket_ts = view_ts + rng.integers(5, 60, len(item))
        # Checkout after the last view and its basket (a basket comes at most 60 s after its view).
        checkout_ts = np.maximum.reduceat(view_ts, np.flatnonzero(np.diff(session, prepend=-1))) + rng.integers(61, 300, n)

        abandoned = np.flatnonzero(carted & ~bought)
        returns = rng.random(len(abandoned)) < cfg.return_rate
        weights = np.asarray(cfg.return_delay_weights)
        delay = 1 + rng.choice(len(weights), len(abandoned), p=weights / weights.sum())
        kept = abandoned[returns]
        result = _Week(
            visitor=np.concatenate([visitor, visitor[carted], visitor[bought]]),
            item=np.concatenate([item, item[carted], item[bought]]),
            ts=np.concatenate([view_ts, basket_ts[carted], checkout_ts[session[bought]]]),
            action=np.concatenate([np.zeros(len(item), int), np.ones(carted.sum(), int), np.full(bought.sum(), 2)]),
            session=np.concatenate([session, session[carted], session[bought]]),
            n_sessions=n,
            returns=(visitor[kept], item[kept], delay[returns]),
        )
        self._weeks[key] = result
        return result


def _inject_bad_rows(frame: pd.DataFrame, share: float, rng: np.random.Generator) -> pd.DataFrame:
    """Spoil ``int(len * share)`` rows the ways event feeds spoil them, each row one way."""
    frame = frame.astype({"visitor": object, "action": object, "ts": object})
    bad = rng.choice(len(frame), int(len(frame) * share), replace=False)
    kinds = np.array_split(bad, 4)
    frame.iloc[kinds[0], frame.columns.get_loc("visitor")] = None  # an anonymous visitor
    frame.iloc[kinds[1], frame.columns.get_loc("action")] = "wishlist"  # an action the mapping does not know
    frame.iloc[kinds[2], frame.columns.get_loc("ts")] = "yesterday"  # a relative time from a client
    frame.iloc[kinds[3], frame.columns.get_loc("ts")] = FAR_FUTURE_S  # a clock gone wrong
    return frame


def _write_atomic(data: bytes, path: Path) -> Path:
    tmp = temporary_beside(path)
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_weeks(
    export_dir: Path,
    weeks: range,
    seed: int = 0,
    drift_from_week: int | None = None,
    config: FunnelConfig = FunnelConfig(),
    bad_rows_weeks: tuple[int, ...] = (),
    bad_row_share: float = 0.05,
) -> list[Path]:
    """Write the shop's export into ``export_dir``: one events file per week, the products file
    (and ``products-week{W}.csv`` with the new items when drift starts at week W after the first
    week) and the mapping file, so ``python -m flows convert <export_dir>/funnel_shop.yaml`` works.

    Each file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    shop = FunnelShop(seed, config)
    export_dir.mkdir(parents=True, exist_ok=True)
    written = [_write_atomic(MAPPING_PATH.read_bytes(), export_dir / MAPPING_PATH.name)]
    drift_at_start = drift_from_week is not None and drift_from_week <= weeks.start
    written.append(write_landing_csv(shop.catalog(include_new_items=drift_at_start), export_dir / "products.csv"))
    for week in weeks:
        if week == drift_from_week and not drift_at_start:
            written.append(write_landing_csv(shop.catalog(include_new_items=True), export_dir / f"products-week{week:03d}.csv"))
        share = bad_row_share if week in bad_rows_weeks else 0.0
        written.append(write_landing_csv(shop.week(week, drift_from_week, share), export_dir / f"events-week{week:03d}.csv"))
    return written
