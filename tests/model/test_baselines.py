"""The backtest's peers on data small enough to rank by hand. Risk guarded: a peer that looks
weak (or strong) because of a bug rather than its method."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.baselines import ALS, UPCF, ItemKNN, RecentPopularity, RepeatPurchase, TIFUKNN

CUTOFF = pd.Timestamp("2011-03-01", tz="UTC")


def frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(user, item, day) rows; a user's rows of one day are one order."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
            "order_id": [f"{r[0]}/{r[2]}" for r in rows], "event_time": pd.to_datetime([r[2] for r in rows], utc=True),
        }
    )


def baskets(by_user: dict[str, list[str]]) -> pd.DataFrame:
    """Each user's baskets, oldest first, one a day from 1 February; a basket is a string of
    one-letter items ("ab" = {a, b})."""
    return frame([
        (user, item, f"2011-02-{day + 1:02d}") for user, sequence in by_user.items() for day, basket in enumerate(sequence) for item in basket
    ])


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


@pytest.mark.parametrize("peer", [RecentPopularity(), RepeatPurchase(), ItemKNN(), TIFUKNN(), UPCF()], ids=lambda p: p.name)
def test_every_peer_fills_k_slots_when_it_knows_enough_items(peer):
    lists = peer.fit(HISTORY, CUTOFF).recommend(pd.Index(["u1", "u2", "new"]), 3)
    assert lists.shape == (3, 3) and (lists != "").all()
    assert all(len(set(row)) == 3 for row in lists.tolist())  # no item twice in a list


def test_tifu_knn_user_vectors_decay_within_and_across_groups():
    # m = 2 groups, r_b = r_g = 0.5. A basket's weight: r_b^(baskets to the group's newest) / group
    # size x r_g^(groups to the newest group) / number of groups.
    peer = TIFUKNN(neighbours=1, r_b=0.5, r_g=0.5, alpha=0.5, m=2).fit(baskets({
        # 3 baskets: groups [{a}] and [{a,b}, {c}] (the newer group takes the extra basket).
        # {a}: 1 x 0.5 / 2 = 0.25; {a,b}: 0.5 / 2 x 1 / 2 = 0.125; {c}: 1 / 2 x 1 / 2 = 0.25.
        # a = 0.25 + 0.125 = 0.375, b = 0.125, c = 0.25.
        "u1": ["a", "ab", "c"],
        # 2 baskets, 2 groups of one: {b}: 0.5 / 2 = 0.25; {c}: 1 / 2 = 0.5.
        "u2": ["b", "c"],
        # 1 basket, 1 group: a = d = 1.
        "u3": ["ad"],
        # 5 baskets: groups [{a}, {b}] and [{c}, {d}, {e}].
        # a: 0.5 / 2 x 0.5 / 2 = 0.0625; b: 1 / 2 x 0.5 / 2 = 0.125;
        # c: 0.25 / 3 / 2 = 1/24; d: 0.5 / 3 / 2 = 1/12; e: 1 / 3 / 2 = 1/6.
        "u4": ["a", "b", "c", "d", "e"],
    }), CUTOFF)
    assert peer.items.tolist() == ["a", "b", "c", "d", "e"]
    expected = [
        [0.375, 0.125, 0.25, 0, 0],
        [0, 0.25, 0.5, 0, 0],
        [1, 0, 0, 1, 0],
        [0.0625, 0.125, 1 / 24, 1 / 12, 1 / 6],
    ]
    np.testing.assert_allclose(peer.user_vectors(pd.Index(["u1", "u2", "u3", "u4"])), expected)
    # u4's nearest user by cosine is u1 (0.447; u3 0.436, u2 0.394), so scores are
    # 0.5 x u4 + 0.5 x u1: a 0.21875, b 0.125, c 0.1458, d 0.0417, e 0.0833.
    np.testing.assert_allclose(peer.scores(pd.Index(["u4"]))[0], 0.5 * np.array(expected[3]) + 0.5 * np.array(expected[0]))
    assert peer.recommend(pd.Index(["u4"]), 5).tolist() == [["a", "c", "b", "e", "d"]]


def test_tifu_knn_mixes_in_the_mean_over_neighbours_not_over_everything():
    # "me" bought a and a rare item r; three users bought a and x; "far" shares nothing. With 3
    # neighbours (cosine 0.5 each, far 0) the neighbour mean is a = 1, x = 1. alpha = 0.2:
    # a = 0.2 x 1 + 0.8 x 1 = 1, x = 0.8 x 1 = 0.8, r = 0.2 x 1 = 0.2.
    # A mean over the whole neighbour matrix adds one constant to every item and ranks r above x;
    # counting "me" as its own neighbour gives x = 0.533, r = 0.467.
    history = baskets({"me": ["ar"], "n1": ["ax"], "n2": ["ax"], "n3": ["ax"], "far": ["z"]})
    peer = TIFUKNN(neighbours=3, alpha=0.2).fit(history, CUTOFF)
    assert peer.items.tolist() == ["a", "r", "x", "z"]
    np.testing.assert_allclose(peer.scores(pd.Index(["me"]))[0], [1.0, 0.2, 0.8, 0.0])
    assert peer.recommend(pd.Index(["me"]), 3).tolist() == [["a", "x", "r"]]


def test_up_cf_weights_the_recent_baskets_of_similar_users():
    history = baskets({"u1": ["ab", "c"], "u2": ["a", "ad"], "u3": ["e"]})
    peer = UPCF(r=1, alpha=0.75, q=2).fit(history, CUTOFF)
    # I_u1 = {a, b, c}, I_u2 = {a, d}, I_u3 = {e}; asymmetric, so sim(u1, u2) != sim(u2, u1).
    s12 = 1 / (3**0.75 * 2**0.25)  # 0.3689
    s21 = 1 / (2**0.75 * 3**0.25)  # 0.4518
    np.testing.assert_allclose(peer.similarity(pd.Index(["u1", "u2", "u3"])), [[1, s12, 0], [s21, 1, 0], [0, 0, 1]])
    # r = 1: shares of the last basket only. u1: c; u2: a, d; u3: e. u1's b is outside its
    # window, so b scores 0 although u1 bought it.
    # u1: a = d = s12^2 = 0.136 (from u2), c = 1 (itself); u2: a = d = 1, c = s21^2 = 0.204.
    np.testing.assert_allclose(
        peer.scores(pd.Index(["u1", "u2"])), [[s12**2, 0, 1, s12**2, 0], [1, 0, s21**2, 1, 0]]
    )
    assert peer.recommend(pd.Index(["u1", "u2"]), 3).tolist() == [["c", "a", "d"], ["a", "d", "c"]]
    # r = 2: u1's window is both baskets (a = b = c = 1/2); u3 has one basket, so e's share is 1.
    wide = UPCF(r=2, alpha=0.75, q=2).fit(history, CUTOFF)
    np.testing.assert_allclose(
        wide.scores(pd.Index(["u1", "u3"])),
        [[0.5 + s12**2 * 1.0, 0.5, 0.5, s12**2 * 0.5, 0], [0, 0, 0, 0, 1]],
    )


def test_up_cf_q_lets_one_close_user_outweigh_many_distant_ones():
    # close: sim(me, close) = 2 / (2^0.5 x 3^0.5) = 0.816; far_i: 1 / (2^0.5 x 4^0.5) = 0.354.
    # q = 1: y = 3 x 0.354 = 1.06 beats x = 0.816; q = 10: x = 0.132 beats y = 3 x 0.354^10 = 9e-5.
    history = baskets({
        "me": ["ab"], "close": ["abx"], "far1": ["ay12"], "far2": ["ay34"], "far3": ["ay56"],
    })
    for q, after_own in ((1, ["y", "x"]), (10, ["x", "y"])):
        top = UPCF(r=10, alpha=0.5, q=q).fit(history, CUTOFF).recommend(pd.Index(["me"]), 4)[0].tolist()
        assert top[:2] == ["a", "b"] and top[2:] == after_own


def test_up_cf_pads_a_list_with_popular_items_not_with_zero_scores():
    # u4 shares no item with anyone: z scores 1 (itself), every other item 0.
    assert UPCF().fit(HISTORY, CUTOFF).recommend(pd.Index(["u4"]), 3).tolist() == [["z", "a", "b"]]


@pytest.mark.parametrize("peer", [TIFUKNN(neighbours=2), UPCF(r=2)], ids=lambda p: p.name)
def test_next_basket_peers_give_strangers_popularity_and_ignore_row_order(peer):
    history = baskets({
        "u1": ["ab", "c", "ab"], "u2": ["bc", "c"], "u3": ["cd", "a", "d", "e"], "u4": ["e", "e"], "u5": ["ab"],
    })
    users = pd.Index(["u1", "u2", "u3", "u4", "u5", "stranger"])
    first = peer.fit(history, CUTOFF).recommend(users, 4)
    popular = RecentPopularity().fit(history, CUTOFF).recommend(pd.Index(["stranger"]), 4)
    assert first[-1].tolist() == popular[0].tolist()
    scores = peer.scores(users[:-1])
    for seed in range(3):
        shuffled = history.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        assert peer.fit(shuffled, CUTOFF).recommend(users, 4).tolist() == first.tolist()
        np.testing.assert_allclose(peer.scores(users[:-1]), scores)


def test_published_settings_are_named_by_their_values():
    assert TIFUKNN().name == TIFUKNN.published("TaFeng").name == "TIFU-KNN (k=300, rb=0.9, rg=0.7, alpha=0.7, m=7)"
    assert TIFUKNN.published("Dunnhumby").name == "TIFU-KNN (k=900, rb=0.9, rg=0.6, alpha=0.2, m=3)"
    assert TIFUKNN.published("Instacart").name == "TIFU-KNN (k=900, rb=0.9, rg=0.7, alpha=0.9, m=3)"
    assert UPCF().name == UPCF.published("TaFeng").name == "UP-CF@r (r=10, alpha=0.75, q=10)"
    assert UPCF.published("Dunnhumby").name == "UP-CF@r (r=25, alpha=0.75, q=10)"


def test_the_tuned_peers_are_the_choices_of_the_december_tuning():
    import json
    from pathlib import Path

    from flows.backtest_harness import TUNED_TIFU, TUNED_UPCF

    tuning = json.loads((Path(__file__).parents[2] / "benchmarks" / "results" / "tuning_december_2011.json").read_text())
    assert tuning["tune_month"] == "2011-12"  # after every test month of the backtest
    assert tuning["results"]["TIFU-KNN"]["chosen"]["params"] == TUNED_TIFU
    assert tuning["results"]["UP-CF@r"]["chosen"]["params"] == TUNED_UPCF
    memory = tuning["results"]["freshrec basket memory"]["chosen"]["params"]
    from models.settings import Settings

    defaults = Settings.model_fields
    assert memory == {
        "basket_decay": defaults["basket_decay"].default, "neighbours": defaults["memory_neighbours"].default,
        "neighbour_share": defaults["neighbour_share"].default, "popularity_share": defaults["popularity_share"].default,
    }
