"""The backtest's peers on data small enough to rank by hand. Risk guarded: a peer that looks
weak (or strong) because of a bug rather than its method."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.baselines import ALS, ItemKNN, RecentPopularity, RepeatPurchase

CUTOFF = pd.Timestamp("2011-03-01", tz="UTC")


def frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(user, item, day) rows."""
    return pd.DataFrame(
        {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "event_time": pd.to_datetime([r[2] for r in rows], utc=True)}
    )


HISTORY = frame([
    ("u1", "a", "2011-02-20"), ("u1", "a", "2011-02-21"), ("u1", "b", "2011-02-25"),
    ("u2", "b", "2011-02-22"), ("u2", "c", "2011-02-23"),
    ("u3", "c", "2011-02-24"), ("u3", "d", "2011-02-26"),
    ("u4", "z", "2010-12-01"), ("u4", "z", "2010-12-02"), ("u4", "z", "2010-12-03"),  # old: outside 30 days
])


def test_recent_popularity_counts_only_the_last_30_days():
    peer = RecentPopularity().fit(HISTORY, CUTOFF)
    # a:2, b:2, c:2, d:1 in February (ties by id); z's three December sales do not count.
    assert peer.recommend(pd.Index(["anyone", "u1"]), 5).tolist() == [["a", "b", "c", "d", ""]] * 2


def test_repeat_purchase_puts_the_users_own_items_first_then_pads():
    peer = RepeatPurchase().fit(HISTORY, CUTOFF)
    lists = peer.recommend(pd.Index(["u1", "u4", "stranger"]), 3).tolist()
    assert lists[0] == ["a", "b", "c"]  # a twice, then b; padded with the most popular not yet listed
    assert lists[1] == ["z", "a", "b"]
    assert lists[2] == ["a", "b", "c"]


def test_item_knn_scores_by_cosine_to_the_users_items():
    peer = ItemKNN().fit(HISTORY, CUTOFF)
    # Binary matrix: a={u1}, b={u1,u2}, c={u2,u3}, d={u3}, z={u4}. For u2 (b, c):
    # a: sim(a,b) = 1/sqrt(2); d: sim(d,c) = 1/sqrt(2); b: sim(b,c) = 1/2; c: sim(c,b) = 1/2; z: 0.
    top = peer.recommend(pd.Index(["u2"]), 4)[0].tolist()
    assert set(top[:2]) == {"a", "d"} and set(top[2:]) == {"b", "c"}
    assert peer.recommend(pd.Index(["stranger"]), 2).tolist() == [["a", "b"]]  # popularity fallback


def test_als_learns_co_purchase_structure():
    rng = np.random.default_rng(0)
    # Two groups of users, each buying from its own half of 20 items.
    rows = []
    for user in range(60):
        group = user % 2
        for item in rng.choice(10, 5, replace=False):
            rows.append((f"u{user}", f"i{group * 10 + item}", "2011-02-15"))
    history = frame(rows)
    peer = ALS(factors=8, iterations=10).fit(history, CUTOFF)
    lists = peer.recommend(pd.Index([f"u{user}" for user in range(60)]), 5)
    in_own_half = [int(item[1:]) // 10 == user % 2 for user, row in enumerate(lists) for item in row]
    assert np.mean(in_own_half) > 0.9
    popular = RecentPopularity().fit(history, CUTOFF).recommend(pd.Index(["stranger"]), 5)
    assert peer.recommend(pd.Index(["stranger"]), 5).tolist() == popular.tolist()  # no factors: popularity


@pytest.mark.parametrize("peer", [RecentPopularity(), RepeatPurchase(), ItemKNN()])
def test_every_peer_fills_k_slots_when_it_knows_enough_items(peer):
    lists = peer.fit(HISTORY, CUTOFF).recommend(pd.Index(["u1", "u2", "new"]), 3)
    assert lists.shape == (3, 3) and (lists != "").all()
    assert all(len(set(row)) == 3 for row in lists.tolist())  # no item twice in a list
