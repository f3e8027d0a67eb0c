"""Scoring a recommender on a slice of interactions it did not train on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from data_checks.contract import of_type
from models.metrics import catalog_coverage, hit_rate_at_k, mrr_at_k, ndcg_at_k, recall_at_k
from models.recommender import Recommender

METRICS = ("recall", "ndcg", "hit_rate", "mrr")  # the per-user ones; coverage is per slice


@dataclass(frozen=True)
class SliceMetrics:
    recall: float  # mean Recall@K over the evaluated users
    ndcg: float
    users: int  # users evaluated
    k: int
    hit_rate: float = 0.0
    mrr: float = 0.0
    coverage: float = 0.0  # share of the candidate items shown to at least one user
    # Per-user values of each metric, in ``user_ids`` order: for bootstrap intervals and for
    # paired comparisons of two models on the same users.
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    user_ids: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))

    def summary(self) -> dict[str, float]:
        return {name: self.value(name) for name in (*METRICS, "coverage")} | {"users": self.users}


SCORE_ELEMENTS = 2**24  # scores held at once when ranking: 64 MB of float32


class Ranker:
    """Ranks the whole item table for users of one recommender. What stays the same between
    calls while the weights do (every item's vectors, the id table, the popular items that
    unknown users get) is computed once, so a served request pays for its users only."""

    def __init__(self, recommender: Recommender, popular_k: int) -> None:
        self.recommender = recommender
        model = recommender.model
        with torch.no_grad():
            self.item_tables = model.item_tables()
        self.device = next(model.parameters()).device  # also scores a model while it trains on a GPU
        popular = recommender.item_counts.nlargest(popular_k)  # ties: the first of equals first
        self.popular_ids = popular.index.to_numpy(dtype=object)
        self.popular_scores = (popular / max(1, recommender.item_counts.sum())).to_numpy(dtype=np.float32)

    def top_k(self, user_ids, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """Item ids and scores of the k best items per user. Users the model never saw get the
        most popular items of its training data (at most ``popular_k``), scored by their share
        of interactions. Slots past the end of a short catalog hold ""."""
        recommender, model = self.recommender, self.recommender.model
        users = recommender.users.encode(user_ids)
        known = users >= 0
        item_ids = np.full((len(users), k), "", dtype=object)
        scores = np.zeros((len(users), k), dtype=np.float32)
        n_popular = min(k, len(self.popular_ids))
        item_ids[~known, :n_popular] = self.popular_ids[:n_popular]
        scores[~known, :n_popular] = self.popular_scores[:n_popular]
        known_rows = np.flatnonzero(known)
        # A chunk's scores are (users, items): bounded to SCORE_ELEMENTS floats, whatever the catalog.
        chunk = max(1, min(chunk, SCORE_ELEMENTS // len(recommender.items)))
        for start in range(0, len(known_rows), chunk):
            rows = known_rows[start : start + chunk]
            with torch.no_grad():
                scored = model.score_all(torch.as_tensor(users[rows], device=self.device), self.item_tables)
                best = scored.topk(min(k, len(recommender.items) - 1), dim=1)
            n = best.indices.shape[1]
            item_ids[rows, :n] = recommender.items.decode(best.indices.cpu().numpy())
            scores[rows, :n] = best.values.float().cpu().numpy()
        return item_ids, scores


def top_k(recommender: Recommender, user_ids: pd.Series, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Item ids and scores of the k best items per user, ranked over the whole item table (see
    ``Ranker.top_k``), with the item tables computed for this call."""
    return Ranker(recommender, k).top_k(user_ids, k, chunk)


def user_sample(ids: pd.Index, n: int) -> pd.Index:
    """The ``n`` of ``ids`` (all when fewer) with the smallest fixed hash: the same ids always
    give the same users, and no user is favoured by its name's order or its activity."""
    if len(ids) <= n:
        return ids
    hashes = pd.util.hash_pandas_object(pd.Series(ids, dtype=object), index=False).to_numpy()
    return ids[np.argsort(hashes, kind="stable")[:n]]


def relevant_sets(interactions: pd.DataFrame, eval_users: pd.Index) -> pd.Series:
    """Per evaluated user (sorted by id), the distinct items they bought in ``interactions``."""
    known = interactions[interactions["user_id"].isin(eval_users)]
    return known.groupby("user_id")["item_id"].agg(frozenset)


def evaluate(
    recommender: Recommender,
    holdout: pd.DataFrame,
    eval_users: pd.Index,
    k: int,
    catalog_size: int | None = None,
    target_event: str | None = None,
    max_users: int | None = None,
) -> SliceMetrics:
    """Recall, NDCG, hit rate and MRR at K, and catalog coverage, on ``holdout``: the relevant
    set of a user is the distinct items they had the ``target_event`` with in it (default: the
    model's own target, a purchase unless configured); only ``eval_users`` (users the system
    knew before the slice) are scored. Coverage counts against ``catalog_size`` (default: the
    items the model can rank), so two models can be compared on the same denominator. With
    ``max_users``, a slice with more users to score is scored on that many of them, the same
    ones for every model (`user_sample`): its cost stops growing with the shop."""
    relevant = relevant_sets(of_type(holdout, target_event or recommender.config.target_event), eval_users)
    if max_users is not None and len(relevant) > max_users:
        relevant = relevant[relevant.index.isin(user_sample(relevant.index, max_users))]
    if relevant.empty:
        return SliceMetrics(recall=0.0, ndcg=0.0, users=0, k=k)
    ranked, _ = top_k(recommender, relevant.index.to_series(), k)
    hits = hit_matrix(ranked, relevant)
    n_relevant = relevant.map(len).to_numpy()
    per_user = {
        "recall": recall_at_k(hits, n_relevant, k),
        "ndcg": ndcg_at_k(hits, n_relevant, k),
        "hit_rate": hit_rate_at_k(hits, k),
        "mrr": mrr_at_k(hits, k),
    }
    return SliceMetrics(
        **{name: float(values.mean()) for name, values in per_user.items()},
        users=len(relevant),
        k=k,
        coverage=catalog_coverage(ranked, catalog_size or len(recommender.items) - 1),
        per_user=per_user,
        user_ids=tuple(relevant.index),
    )


def hit_matrix(ranked: np.ndarray, relevant: pd.Series) -> np.ndarray:
    """``hits[u, r]``: is the r-th item of user u's list in their relevant set (one join, no
    Python loop over users)."""
    n_users, k = ranked.shape
    pairs = pd.DataFrame(
        {"row": np.repeat(np.arange(n_users), relevant.map(len).to_numpy()), "item_id": [i for s in relevant for i in s]}
    )
    listed = pd.DataFrame({"row": np.repeat(np.arange(n_users), k), "rank": np.tile(np.arange(k), n_users), "item_id": ranked.ravel()})
    found = listed.merge(pairs, on=["row", "item_id"], how="inner")
    hits = np.zeros((n_users, k), dtype=bool)
    hits[found["row"].to_numpy(), found["rank"].to_numpy()] = True
    return hits
