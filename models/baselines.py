"""The peers freshrec is compared with in the backtest: what a team would run instead.

Each peer is fitted on the interactions before a cut-off and ranks, for each user, the items it
can score (items seen before the cut-off: none of them can place an item nobody has bought).
``recommend`` returns item ids, shape (len(users), k), "" where a peer has fewer than k items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _popular(interactions: pd.DataFrame, k: int | None) -> np.ndarray:
    counts = interactions["item_id"].value_counts()
    # Ties broken by item id, so a ranking does not depend on row order.
    ranked = counts.rename("n").reset_index().sort_values(["n", "item_id"], ascending=[False, True], kind="stable")
    return ranked["item_id"].to_numpy(dtype=object)[:k]


def _pad(rows: list[list[str]], k: int) -> np.ndarray:
    result = np.full((len(rows), k), "", dtype=object)
    for i, row in enumerate(rows):
        result[i, : min(k, len(row))] = row[:k]
    return result


@dataclass
class RecentPopularity:
    """The items bought most in the last ``days`` before the cut-off, the same list for everyone."""

    days: int = 30
    name: str = "recent popularity (30 days)"
    ranking: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))

    def fit(self, history: pd.DataFrame, cutoff: pd.Timestamp) -> "RecentPopularity":
        recent = history[history["event_time"] >= cutoff - pd.Timedelta(days=self.days)]
        self.ranking = _popular(recent if len(recent) else history, None)
        return self

    def recommend(self, users: pd.Index, k: int) -> np.ndarray:
        return _pad([list(self.ranking[:k])] * len(users), k)


@dataclass
class RepeatPurchase:
    """The user's own most bought items (most recent first among equals), then recent popularity."""

    days: int = 30
    name: str = "repeat purchase"
    own: dict = field(default_factory=dict)
    popular: RecentPopularity = field(default_factory=RecentPopularity)

    def fit(self, history: pd.DataFrame, cutoff: pd.Timestamp) -> "RepeatPurchase":
        stats = history.groupby(["user_id", "item_id"], observed=True)["event_time"].agg(["size", "max"]).reset_index()
        stats = stats.sort_values(["user_id", "size", "max", "item_id"], ascending=[True, False, False, True], kind="stable")
        self.own = {user: group["item_id"].tolist() for user, group in stats.groupby("user_id", sort=False, observed=True)}
        self.popular = RecentPopularity(self.days).fit(history, cutoff)
        return self

    def recommend(self, users: pd.Index, k: int) -> np.ndarray:
        fallback = list(self.popular.ranking[: 2 * k])
        rows = []
        for user in users:
            mine = self.own.get(user, [])[:k]
            seen = set(mine)
            rows.append(mine + [item for item in fallback if item not in seen][: k - len(mine)])
        return _pad(rows, k)


class _UserItemMatrix:
    """Users x items, 1 where the user bought the item (any number of times)."""

    def __init__(self, history: pd.DataFrame) -> None:
        self.users = pd.Index(history["user_id"].unique())
        self.items = pd.Index(history["item_id"].unique())
        rows, cols = self.users.get_indexer(history["user_id"]), self.items.get_indexer(history["item_id"])
        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(self.users), len(self.items)))
        matrix.data[:] = 1.0  # duplicates summed by the constructor: binary again
        self.matrix = matrix


class _ScoringPeer:
    """A peer that scores every item it knows for a known user (``scores``); others get recent
    popularity. Users are scored in chunks, so memory stays at chunk x items."""

    chunk = 2048

    def recommend(self, users: pd.Index, k: int) -> np.ndarray:
        result = self.popular.recommend(users, k)
        rows = self.data.users.get_indexer(users)
        known = np.flatnonzero(rows >= 0)
        for start in range(0, len(known), self.chunk):
            batch = known[start : start + self.chunk]
            result[batch] = _top_items(self.scores(rows[batch]), self.data.items, k)
        return result


@dataclass
class ItemKNN(_ScoringPeer):
    """Item-based collaborative filtering: an item scores the sum of its cosine similarities (on
    the binary user-item matrix) to the items of the user's history. Users without history get
    recent popularity."""

    name: str = "item-kNN (cosine)"

    def fit(self, history: pd.DataFrame, cutoff: pd.Timestamp) -> "ItemKNN":
        self.data = _UserItemMatrix(history)
        norms = np.sqrt(np.asarray(self.data.matrix.sum(axis=0)).ravel())
        normalized = self.data.matrix @ sp.diags(1.0 / np.maximum(norms, 1e-12))
        similarity = (normalized.T @ normalized).tocsr()
        similarity.setdiag(0.0)  # an item is not its own neighbour
        similarity.eliminate_zeros()
        self.similarity = similarity
        self.popular = RecentPopularity().fit(history, cutoff)
        return self

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return (self.data.matrix[rows] @ self.similarity).toarray()


@dataclass
class ALS(_ScoringPeer):
    """Implicit-feedback matrix factorisation (Hu, Koren and Volinsky), from the `implicit`
    library (a development dependency): confidence 1 + alpha x purchases."""

    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 10.0
    seed: int = 0
    name: str = "ALS (implicit)"

    def fit(self, history: pd.DataFrame, cutoff: pd.Timestamp) -> "ALS":
        try:
            from implicit.cpu.als import AlternatingLeastSquares
            from threadpoolctl import threadpool_limits  # a dependency of implicit
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise RuntimeError("the ALS peer needs the `implicit` package: pip install -e '.[dev]'") from error
        self.data = _UserItemMatrix(history)
        counts = history.groupby(["user_id", "item_id"], observed=True).size()
        rows, cols = self.data.users.get_indexer(counts.index.get_level_values(0)), self.data.items.get_indexer(counts.index.get_level_values(1))
        confidence = sp.csr_matrix(
            (1.0 + self.alpha * counts.to_numpy(dtype=np.float32), (rows, cols)), shape=self.data.matrix.shape, dtype=np.float32
        )
        with threadpool_limits(1, "blas"):  # implicit parallelises itself; a BLAS pool on top thrashes
            self.model = AlternatingLeastSquares(
                factors=self.factors, iterations=self.iterations, regularization=self.regularization,
                random_state=self.seed, calculate_training_loss=False,
            )
            self.model.fit(confidence, show_progress=False)
        self.popular = RecentPopularity().fit(history, cutoff)
        return self

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.user_factors[rows] @ self.model.item_factors.T)


class _Baskets:
    """A history as baskets: one (user, order) each, ordered by time within the user. Users and
    items are in id order, so nothing depends on the order of the rows."""

    def __init__(self, history: pd.DataFrame) -> None:
        rows = history.drop_duplicates(["user_id", "order_id", "item_id"])
        baskets = rows.groupby(["user_id", "order_id"], observed=True)["event_time"].min().reset_index()
        baskets = baskets.sort_values(["user_id", "event_time", "order_id"], kind="stable").reset_index(drop=True)
        self.users = pd.Index(baskets["user_id"].unique())  # in id order: the baskets are sorted by user
        self.items = pd.Index(rows["item_id"].unique()).sort_values()
        self.user = self.users.get_indexer(baskets["user_id"])  # each basket's user (row)
        per_user = np.bincount(self.user, minlength=len(self.users))
        self.count = per_user[self.user]  # how many baskets the basket's user has
        first = np.concatenate([[0], np.cumsum(per_user)[:-1]])
        self.position = np.arange(len(baskets)) - first[self.user]  # 0 = the user's oldest basket
        keys = ["user_id", "order_id"]
        row_basket = pd.MultiIndex.from_frame(baskets[keys]).get_indexer(pd.MultiIndex.from_frame(rows[keys]))
        self.matrix = sp.csr_matrix(
            (np.ones(len(rows)), (row_basket, self.items.get_indexer(rows["item_id"]))), shape=(len(baskets), len(self.items))
        )

    def per_user(self, weights: np.ndarray) -> sp.csr_matrix:
        """Users x items: each user's baskets summed with the given per-basket weights."""
        spread = sp.csr_matrix((weights, (self.user, np.arange(len(weights)))), shape=(len(self.users), len(weights)))
        return (spread @ self.matrix).tocsr()


class _BasketPeer:
    """A next-basket peer: known users get their ``_scores`` (items in id order), others recent
    popularity. A list runs through the items scored above zero, ties by item id, and is filled
    with recent popularity: a zero score ranks nothing."""

    chunk = 1024

    def scores(self, users: pd.Index) -> np.ndarray:
        """Scores of known users, shape (len(users), len(self.items)), columns in ``self.items``."""
        rows = self.baskets.users.get_indexer(users)
        if (rows < 0).any():
            raise KeyError(f"users with no history: {list(users[rows < 0])}")
        return self._scores(rows)

    @property
    def items(self) -> pd.Index:
        return self.baskets.items

    def recommend(self, users: pd.Index, k: int) -> np.ndarray:
        result = self.popular.recommend(users, k)
        rows = self.baskets.users.get_indexer(users)
        known = np.flatnonzero(rows >= 0)
        fallback = list(self.popular.ranking)
        for start in range(0, len(known), self.chunk):
            batch = known[start : start + self.chunk]
            scores = self._scores(rows[batch])
            best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties stay in item id order
            positive = np.take_along_axis(scores, best, axis=1) > 0
            ids = self.items.to_numpy(dtype=object)[best]
            lists = []
            for row_ids, row_positive in zip(ids, positive):
                mine = list(row_ids[row_positive])
                seen = set(mine)
                lists.append(mine + [item for item in fallback if item not in seen][: k - len(mine)])
            result[batch] = _pad(lists, k)
        return result


@dataclass
class TIFUKNN(_BasketPeer):
    """TIFU-KNN (Hu, He, Gao and Zhang, SIGIR 2020): a user's time-decayed item frequencies
    mixed with the mean of the nearest users' (cosine on those vectors).

    The baskets, oldest first, are split into ``m`` groups of consecutive baskets: ``m`` is the
    number of groups, as in the authors' code (github.com/HaojiHu/TIFUKNN, whose README calls it
    the group size), so the published settings mean what they meant there. A user with fewer
    than ``m`` baskets has one group per basket; otherwise the groups differ by at most one
    basket and the newer groups take the extra ones, as there. A group's vector is the mean of
    its baskets' multi-hot vectors, each weighted ``r_b`` ** (baskets between it and the group's
    newest: the authors' code counts to the user's newest instead); the user's vector is the
    mean of the group vectors, each weighted ``r_g`` ** (groups between it and the newest group).
    A score is ``alpha`` x the user's vector + (1 - ``alpha``) x the mean of the vectors of the
    ``neighbours`` (the paper's k) most similar other users.
    """

    neighbours: int = 300
    r_b: float = 0.9
    r_g: float = 0.7
    alpha: float = 0.7
    m: int = 7

    PUBLISHED: ClassVar[dict[str, dict]] = {  # the paper's settings for its data sets
        "TaFeng": dict(neighbours=300, r_b=0.9, r_g=0.7, alpha=0.7, m=7),
        "Dunnhumby": dict(neighbours=900, r_b=0.9, r_g=0.6, alpha=0.2, m=3),
        "Instacart": dict(neighbours=900, r_b=0.9, r_g=0.7, alpha=0.9, m=3),
    }

    @classmethod
    def published(cls, dataset: str) -> "TIFUKNN":
        return cls(**cls.PUBLISHED[dataset])

    @property
    def name(self) -> str:
        return f"TIFU-KNN (k={self.neighbours}, rb={self.r_b}, rg={self.r_g}, alpha={self.alpha}, m={self.m})"

    def fit(self, history: pd.DataFrame, cutoff: pd.Timestamp) -> "TIFUKNN":
        self.baskets = data = _Baskets(history)
        t, p = data.count, data.position
        groups = np.minimum(t, self.m)
        size, extra = t // groups, t % groups
        n_small = (groups - extra) * size  # baskets in the older groups, the ones without an extra basket
        small = p < n_small
        group = np.where(small, p // size, groups - extra + (p - n_small) // (size + 1))
        group_size = np.where(small, size, size + 1)
        group_end = np.where(small, (group + 1) * size, n_small + (group - groups + extra + 1) * (size + 1))
        weights = self.r_b ** (group_end - 1 - p) / group_size * self.r_g ** (groups - 1 - group) / groups
        self.vectors = data.per_user(weights)
        self.neighbour_weights = self._neighbours(self.vectors)
        self.popular = RecentPopularity().fit(history, cutoff)
        return self

    def user_vectors(self, users: pd.Index) -> np.ndarray:
        """The users' time-decayed frequency vectors, columns in ``self.items``."""
        return self.vectors[self.baskets.users.get_indexer(users)].toarray()

    def _neighbours(self, vectors: sp.csr_matrix) -> sp.csr_matrix:
        """Users x users, 1 / n where a user's n nearest other users are (ties: lower user id)."""
        n_users = vectors.shape[0]
        n = min(self.neighbours, n_users - 1)
        if n <= 0:
            return sp.csr_matrix((n_users, n_users))
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
        unit = (sp.diags(1.0 / norms) @ vectors).astype(np.float32).tocsr()
        rows, cols = [], []
        for start in range(0, n_users, self.chunk):
            similarity = (unit[start : start + self.chunk] @ unit.T).toarray()
            own = np.arange(similarity.shape[0])
            similarity[own, start + own] = -np.inf  # a user is not their own neighbour
            nth = np.partition(similarity, n_users - n, axis=1)[:, n_users - n][:, None]
            above, tied = similarity > nth, similarity == nth
            needed = n - above.sum(axis=1, keepdims=True)
            chosen = above | (tied & (np.cumsum(tied, axis=1) <= needed))
            row, col = np.nonzero(chosen)
            rows.append(row + start)
            cols.append(col)
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        return sp.csr_matrix((np.full(len(rows), 1.0 / n), (rows, cols)), shape=(n_users, n_users))

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        own = self.vectors[rows].toarray()
        others = (self.neighbour_weights[rows] @ self.vectors).toarray()
        return self.alpha * own + (1 - self.alpha) * others


@dataclass
class UPCF(_BasketPeer):
    """UP-CF@r (Faggioli, Polato and Aiolli, UMAP 2020): an item scores, summed over all users v
    (the user included, similarity 1), sim(u, v) ** ``q`` x the share of v's last ``r`` baskets
    (all of them, if v has fewer) that contain it. sim is the asymmetric cosine on the sets of
    items ever bought, |I_u & I_v| / (|I_u| ** ``alpha`` x |I_v| ** (1 - ``alpha``))."""

    r: int = 10
    alpha: float = 0.75
    q: float = 10

    PUBLISHED: ClassVar[dict[str, dict]] = {  # the paper's settings for its data sets
        "TaFeng": dict(r=10, alpha=0.75, q=10),
        "Dunnhumby": dict(r=25, alpha=0.75, q=10),
    }

    @classmethod
    def published(cls, dataset: str) -> "UPCF":
        return cls(**cls.PUBLISHED[dataset])

    @property
    def name(self) -> str:
        return f"UP-CF@r (r={self.r}, alpha={self.alpha}, q={self.q})"

    def fit(self, history: pd.DataFrame, cutoff: pd.Timestamp) -> "UPCF":
        self.baskets = data = _Baskets(history)
        bought = data.per_user(np.ones(len(data.user)))
        bought.data[:] = 1.0
        self.bought = bought
        self.n_bought = np.asarray(bought.sum(axis=1)).ravel()
        recent = data.position >= data.count - self.r
        self.share = data.per_user(recent / np.minimum(data.count, self.r))
        self.popular = RecentPopularity().fit(history, cutoff)
        return self

    def similarity(self, users: pd.Index) -> np.ndarray:
        """Asymmetric cosine of known users to every user, columns in ``self.baskets.users``."""
        return self._similarity(self.baskets.users.get_indexer(users))

    def _similarity(self, rows: np.ndarray) -> np.ndarray:
        common = (self.bought[rows] @ self.bought.T).toarray()
        return common / self.n_bought[rows, None] ** self.alpha / self.n_bought[None, :] ** (1 - self.alpha)

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        return (self.share.T @ (self._similarity(rows) ** self.q).T).T


def _top_items(scores: np.ndarray, items: pd.Index, k: int) -> np.ndarray:
    """The k best-scored item ids per row, best first."""
    k_eff = min(k, scores.shape[1])
    best = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    order = np.take_along_axis(scores, best, axis=1).argsort(axis=1)[:, ::-1]
    best = np.take_along_axis(best, order, axis=1)
    result = np.full((scores.shape[0], k), "", dtype=object)
    result[:, :k_eff] = items.to_numpy(dtype=object)[best]
    return result
