"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models.evaluate import hit_matrix
from models.metrics import bootstrap_ci, catalog_coverage, hit_rate_at_k, mrr_at_k, ndcg_at_k, recall_at_k


def test_recall_divides_by_the_best_possible_count():
    hits = np.array([[True, False, True], [False, False, False], [False, True, True]])
    n_relevant = np.array([4, 1, 2])
    # user 0: 2 hits of min(3, 4) = 3 possible; user 1: none; user 2: both of its 2 items found
    assert recall_at_k(hits, n_relevant, 3) == pytest.approx([2 / 3, 0.0, 1.0])
    # at k=2, user 2 has 1 of min(2, 2) = 2
    assert recall_at_k(hits, n_relevant, 2) == pytest.approx([1 / 2, 0.0, 1 / 2])


def test_ndcg_by_hand():
    hits = np.array([[False, True, False], [True, True, False]])
    n_relevant = np.array([1, 2])
    expected_0 = (1 / math.log2(3)) / 1.0
    expected_1 = 1.0  # both relevant items at the top
    assert ndcg_at_k(hits, n_relevant, 3) == pytest.approx([expected_0, expected_1])


def test_hit_rate_and_mrr_by_hand():
    hits = np.array([[False, False, True], [True, True, False], [False, False, False]])
    assert hit_rate_at_k(hits, 3) == pytest.approx([1.0, 1.0, 0.0])
    assert hit_rate_at_k(hits, 2) == pytest.approx([0.0, 1.0, 0.0])  # user 0's hit is at rank 3
    assert mrr_at_k(hits, 3) == pytest.approx([1 / 3, 1.0, 0.0])  # the first hit counts, once
    assert mrr_at_k(hits, 2) == pytest.approx([0.0, 1.0, 0.0])


def test_catalog_coverage_counts_distinct_items_shown():
    ranked = np.array([["a", "b"], ["b", "c"], ["a", ""]], dtype=object)  # "" is an empty slot
    assert catalog_coverage(ranked, 6) == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        catalog_coverage(ranked, 0)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_users():
    rng = np.random.default_rng(1)
    few, many = rng.random(50), rng.random(5_000)
    low, high = bootstrap_ci(few, 0.95, 2_000, seed=0)
    assert low < few.mean() < high
    wide, narrow = high - low, np.subtract(*bootstrap_ci(many, 0.95, 2_000, seed=0)[::-1])
    # The standard error falls with the square root of the users: 10x narrower for 100x the users.
    assert 5 < wide / narrow < 20
    # A constant has no spread; a paired difference of identical models is exactly zero.
    assert bootstrap_ci(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))
    assert bootstrap_ci(many - many) == (0.0, 0.0)
    assert all(np.isnan(bootstrap_ci(np.empty(0))))


def test_bootstrap_interval_of_a_uniform_mean_matches_the_normal_approximation():
    values = np.random.default_rng(2).integers(0, 2, 2_000).astype(float)  # hit or miss
    low, high = bootstrap_ci(values, 0.95, 4_000, seed=3)
    half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_hit_matrix_is_the_per_user_membership_test():
    ranked = np.array([["a", "b", "c"], ["c", "", ""], ["x", "y", "z"]], dtype=object)
    relevant = pd.Series([frozenset({"b", "c"}), frozenset({"c"}), frozenset({"q"})], index=["u1", "u2", "u3"])
    expected = [[item in wanted for item in row] for row, wanted in zip(ranked, relevant)]
    assert hit_matrix(ranked, relevant).tolist() == expected
