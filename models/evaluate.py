"""Scoring a recommender on a slice of interactions it did not train on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.metrics import ndcg_at_k, recall_at_k
from models.train import Recommender


@dataclass(frozen=True)
class SliceMetrics:
    recall: float  # mean Recall@K over the evaluated users
    ndcg: float
    users: int  # users evaluated
    k: int


def top_k(recommender: Recommender, user_ids: pd.Series, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Item ids and scores of the k best items per user. Users the model never saw get the most
    popular items of its training data, scored by their share of interactions."""
    users = recommender.users.encode(user_ids)
    known = users >= 0
    item_ids = np.full((len(users), k), "", dtype=object)
    scores = np.zeros((len(users), k), dtype=np.float32)
    popular = recommender.item_counts.nlargest(k)
    item_ids[~known, : len(popular)] = popular.index.to_numpy()
    scores[~known, : len(popular)] = (popular / recommender.item_counts.sum()).to_numpy()
    known_rows = np.flatnonzero(known)
    model = recommender.model
    device = next(model.parameters()).device  # also scores a model while it trains on a GPU
    for start in range(0, len(known_rows), chunk):
        rows = known_rows[start : start + chunk]
        with torch.no_grad():
            best = model.score_all(torch.as_tensor(users[rows], device=device)).topk(min(k, len(recommender.items) - 1), dim=1)
        n = best.indices.shape[1]
        item_ids[rows, :n] = recommender.items.decode(best.indices.cpu().numpy())
        scores[rows, :n] = best.values.float().cpu().numpy()
    return item_ids, scores


def evaluate(recommender: Recommender, holdout: pd.DataFrame, eval_users: pd.Index, k: int) -> SliceMetrics:
    """Recall@K and NDCG@K on ``holdout``: the relevant set of a user is the distinct items they
    bought in it; only ``eval_users`` (users the system knew before the slice) are scored."""
    relevant = holdout[holdout["user_id"].isin(eval_users)].groupby("user_id")["item_id"].agg(lambda s: set(s))
    if relevant.empty:
        return SliceMetrics(recall=0.0, ndcg=0.0, users=0, k=k)
    ranked, _ = top_k(recommender, relevant.index.to_series(), k)
    hits = np.array([[item in wanted for item in row] for row, wanted in zip(ranked, relevant)], dtype=bool)
    n_relevant = relevant.map(len).to_numpy()
    return SliceMetrics(
        recall=float(recall_at_k(hits, n_relevant, k).mean()),
        ndcg=float(ndcg_at_k(hits, n_relevant, k).mean()),
        users=len(relevant),
        k=k,
    )
