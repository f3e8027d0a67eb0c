"""Ranking metrics, vectorised over users. ``hits[u, r]`` is True when the item ranked r-th for
user u is relevant; ``n_relevant[u]`` counts the user's relevant items, found or not. Lists are
ranked over the whole catalog (no candidate sampling), so the figures are exact.
"""

from __future__ import annotations

import numpy as np


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """|top-k ∩ R| / min(k, |R|) per user: 1.0 means the list could not have been better."""
    return hits[:, :k].sum(axis=1) / np.minimum(k, n_relevant)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG@k per user."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(k, n_relevant) - 1]
    return dcg / ideal


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1.0 per user with at least one relevant item in the top k, else 0.0."""
    return hits[:, :k].any(axis=1).astype(np.float64)


def mrr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank of the first relevant item in the top k per user (0.0 when none is)."""
    top = hits[:, :k]
    first = top.argmax(axis=1)  # the first True, or 0 when there is none
    return np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)


def catalog_coverage(ranked_items: np.ndarray, catalog_size: int) -> float:
    """Share of the catalog that appears in at least one user's list (empty slots, "", excluded):
    a model that shows everyone the same bestsellers covers almost nothing."""
    if catalog_size <= 0:
        raise ValueError("catalog_size must be positive")
    shown = np.unique(ranked_items[ranked_items != ""])
    return len(shown) / catalog_size


def bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0, chunk: int = 100
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values`` (users resampled with
    replacement). For a paired comparison pass the per-user differences of two models scored on
    the same users. Resampled in chunks, so memory stays at ``chunk`` x len(values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means[start : start + size] = values[rng.integers(0, len(values), (size, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
