"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import ndcg_at_k, recall_at_k


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
