"""Ranking metrics, vectorised over users. ``hits[u, r]`` is True when the item ranked r-th for
user u is relevant; ``n_relevant[u]`` counts the user's relevant items, found or not."""

from __future__ import annotations

import numpy as np


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """|top-k ∩ R| / min(k, |R|) per user: 1.0 means the list could not have been better."""
    return hits[:, :k].sum(axis=1) / np.minimum(k, n_relevant)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG@k per user."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(k, n_relevant) - 1]
    return dcg / ideal
