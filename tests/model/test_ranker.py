"""What a served request costs: the item side computed once per loaded version, ids looked up
without a pass over the vocabulary, and the same lists as ranking from scratch.

Risks guarded: a request that recomputes every item's vector (165 ms a user at 100k items), an id
lookup that turns the whole vocabulary into a Series each call (145 ms at 350k users), and a
fast path that ranks differently from the evaluation's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from data_checks.sources.synthetic import SyntheticShop
from models.evaluate import Ranker, top_k
from models.pyfunc import ServingLimits, rank, warm_ranker
from models.recommender import Recommender, TrainConfig
from models.train import prepare, train
from models.vocab import Vocabulary
from tests.conftest import TINY_SHOP


@pytest.fixture(scope="module")
def recommender() -> Recommender:
    shop = SyntheticShop(0, TINY_SHOP)
    history = pd.concat([shop.week(w) for w in range(2)], ignore_index=True)
    trained = train(prepare(history, shop.catalog(False), TrainConfig(epochs=1, batch_size=256, dim=8), None), history, progress=False)
    trained.model.memory_weight.fill_(0.5)  # the basket memory and its neighbours take part
    return trained


def test_a_warm_ranker_computes_no_item_vectors_per_request(recommender, monkeypatch):
    ranker = warm_ranker(recommender, ServingLimits())
    calls = []
    item_vectors = recommender.model.item_vectors
    monkeypatch.setattr(recommender.model, "item_vectors", lambda *a, **k: calls.append(1) or item_vectors(*a, **k))
    for user in recommender.users.ids[:20]:
        rank(ranker, np.array([user], dtype=object), 10)
    assert calls == []


def test_the_ranker_ranks_as_top_k_does_for_one_user_and_for_many(recommender):
    ranker = Ranker(recommender, 100)
    users = recommender.users.ids[:80] + ["never-seen-visitor"]
    expected_items, expected_scores = top_k(recommender, pd.Series(users), 20)
    for one in (users[0], users[40], "never-seen-visitor"):  # the few-users path of the neighbour similarities
        items, scores = ranker.top_k([one], 20)
        row = users.index(one)
        assert items[0].tolist() == expected_items[row].tolist()
        np.testing.assert_allclose(scores[0], expected_scores[row], rtol=1e-5)
    items, scores = ranker.top_k(users, 20)  # the dense path: more users than SPARSE_SIMILARITY_USERS
    assert items.tolist() == expected_items.tolist()
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_the_sparse_and_dense_neighbour_similarities_agree(recommender):
    model = recommender.model
    users = torch.arange(min(model.args.n_users, 40))
    dense = model.memory_scores(users)  # 40 users: the dense product
    few = torch.cat([model.memory_scores(users[i : i + 1]) for i in range(len(users))])  # one at a time: the sparse one
    torch.testing.assert_close(few, dense, rtol=1e-5, atol=1e-6)


def test_the_popular_items_of_a_smaller_k_are_the_first_of_a_larger_one():
    counts = pd.Series([5, 9, 5, 9, 1, 5], index=[f"i{i}" for i in range(6)])  # ties on purpose
    for k in range(1, 7):
        assert counts.nlargest(k).index.tolist() == counts.nlargest(6).index.tolist()[:k]


@pytest.mark.parametrize("values", [
    ["u1", "x", "", "17850"], ("u2",), np.array(["u5", "zz"], dtype=object), [17850, "17850", None],
    pd.Series(["u3", pd.NA], dtype="string"), [f"u{i}" for i in range(200)], [],
])
def test_encoding_ids_gives_the_rows_the_ids_had_before_the_fast_paths(values):
    vocabulary = Vocabulary([f"u{i}" for i in range(1000)] + ["17850", ""], reserved=1)
    reference = pd.Series(values, dtype="string").map(vocabulary._index).fillna(-1).astype(np.int64).to_numpy()
    assert vocabulary.encode(values).tolist() == reference.tolist()
    assert vocabulary.encode(values, missing=0).tolist() == np.where(reference == -1, 0, reference).tolist()
