"""Scoring whose cost stops growing with the shop. Risks guarded: a neighbour pool that changes
scores where every user fits in it or seeks neighbours outside it, ranking in chunks that gives
other lists than ranking user by user, a capped evaluation that scores other users for the
challenger than for the champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data_checks.sources.synthetic import SyntheticShop
from models import two_tower
from models.evaluate import evaluate, top_k, user_sample
from models.recommender import Recommender, TrainConfig
from models.train import prepare, train
from tests.conftest import TINY_SHOP


@pytest.fixture(scope="module")
def trained() -> tuple[Recommender, pd.DataFrame, pd.DataFrame]:
    shop = SyntheticShop(0, TINY_SHOP)
    history = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    config = TrainConfig(epochs=2, batch_size=256, dim=8, neighbours=5)
    model = train(prepare(history, shop.catalog(include_new_items=True), config, None), history, progress=False)
    model.model.memory_weight.fill_(1.0)
    return model, history, shop.week(2)


def neighbour_mean_by_hand(model, users: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """The neighbours' mean share, computed densely over ``candidates`` only."""
    shares = model.memory_sums / model.memory_baskets.clamp(min=1e-12).unsqueeze(1)
    dense = torch.zeros(model.args.n_users, model.args.n_items).scatter_add_(1, model.memory_items, shares)
    norms = dense.norm(dim=1)
    similarity = dense[users] @ dense[candidates].T / (norms[users].unsqueeze(1) * norms[candidates].unsqueeze(0)).clamp(min=1e-12)
    similarity[candidates.unsqueeze(0) == users.unsqueeze(1)] = float("-inf")
    best = similarity.topk(n, dim=1)
    lend = (best.values > 0).float() / n
    return (dense[candidates[best.indices]] * lend.unsqueeze(-1)).sum(1)


def test_the_neighbour_pool_changes_nothing_where_every_user_fits_and_bounds_the_search_elsewhere(trained):
    recommender, history, _ = trained
    model = recommender.model
    users = torch.as_tensor(recommender.users.encode(history["user_id"].unique()[:50]))
    args = model.args
    everyone = model.memory_scores(users)
    model.args = args.__class__(**{**args.__dict__, "neighbour_pool": args.n_users})
    model._memory_cache = None
    assert torch.equal(model.memory_scores(users), everyone)
    pool_size = args.n_users // 4
    model.args = args.__class__(**{**args.__dict__, "neighbour_pool": pool_size, "popularity_share": 0.0, "neighbour_share": 1.0})
    model._memory_cache = None
    try:
        pooled = model.memory_scores(users)
        pool = model.memory_baskets.topk(pool_size).indices.sort().values
        own = torch.zeros(len(users), args.n_items).scatter_add_(
            1, model.memory_items[users], (model.memory_sums / model.memory_baskets.clamp(min=1e-12).unsqueeze(1))[users],
        )
        expected = own + neighbour_mean_by_hand(model, users, pool, min(args.neighbours, pool_size - 1))
        assert torch.allclose(pooled, expected, atol=1e-5)
        assert not torch.allclose(pooled, everyone)  # the pool is a real bound
    finally:
        model.args = args
        model._memory_cache = None


def test_ranking_in_bounded_chunks_gives_the_lists_of_ranking_one_user_at_a_time(trained, monkeypatch):
    recommender, history, _ = trained
    users = pd.Series(history["user_id"].unique()[:40])
    whole_ids, whole_scores = top_k(recommender, users, 20)
    monkeypatch.setattr("models.evaluate.SCORE_ELEMENTS", 3 * len(recommender.items))  # three users a chunk
    chunked_ids, chunked_scores = top_k(recommender, users, 20)
    one = [top_k(recommender, users.iloc[[i]], 20, chunk=1) for i in range(len(users))]
    np.testing.assert_array_equal(chunked_ids, whole_ids)
    np.testing.assert_array_equal(np.vstack([ids for ids, _ in one]), whole_ids)
    np.testing.assert_allclose(chunked_scores, whole_scores, rtol=1e-6)


def test_a_capped_evaluation_scores_the_same_users_for_every_model(trained):
    recommender, history, holdout = trained
    known = pd.Index(history["user_id"].unique())
    whole = evaluate(recommender, holdout, known, 20)
    capped = evaluate(recommender, holdout, known, 20, max_users=whole.users // 2)
    assert capped.users == whole.users // 2
    assert set(capped.user_ids) == set(user_sample(pd.Index(whole.user_ids), whole.users // 2))
    untrained = prepare(history, pd.DataFrame({"item_id": [], "category": [], "price": []}), recommender.config, None)
    assert evaluate(untrained, holdout, known, 20, max_users=whole.users // 2).user_ids == capped.user_ids
    assert evaluate(recommender, holdout, known, 20, max_users=whole.users) == whole  # at or above the slice: all of it


def test_memoized_memory_keeps_entries_bounded_by_the_users_not_the_catalog(trained, monkeypatch):
    recommender, history, _ = trained
    model = recommender.model
    users = torch.as_tensor(recommender.users.encode(history["user_id"].unique()[:50]))
    entries = len(model._compute_personal_memory(users)[0])
    assert 0 < entries < len(users) * model.args.n_items // 2  # fewer than a dense block, even in a tiny catalog
    computed = []
    compute = model._compute_personal_memory
    monkeypatch.setattr(model, "_compute_personal_memory", lambda u: computed.append(len(u)) or compute(u))
    for limit, computations in ((entries, 1), (entries - 1, 2)):  # what fits is kept; what does not, is not
        monkeypatch.setattr(two_tower, "MEMO_ELEMENTS", limit)
        computed.clear()
        with model.memoized_memory():
            first = model.memory_scores(users)
            assert torch.equal(model.memory_scores(users), first)
        assert len(computed) == computations
