"""The peers freshrec is compared with in the backtest: what a team would run instead.

Each peer is fitted on the interactions before a cut-off and ranks, for each user, the items it
can score (items seen before the cut-off: none of them can place an item nobody has bought).
``recommend`` returns item ids, shape (len(users), k), "" where a peer has fewer than k items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def _top_items(scores: np.ndarray, items: pd.Index, k: int) -> np.ndarray:
    """The k best-scored item ids per row, best first."""
    k_eff = min(k, scores.shape[1])
    best = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    order = np.take_along_axis(scores, best, axis=1).argsort(axis=1)[:, ::-1]
    best = np.take_along_axis(best, order, axis=1)
    result = np.full((scores.shape[0], k), "", dtype=object)
    result[:, :k_eff] = items.to_numpy(dtype=object)[best]
    return result
