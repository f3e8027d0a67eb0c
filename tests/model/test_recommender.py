"""Model behaviour: it learns, a warm start keeps what it knew, new items and users get vectors,
a checkpoint is the whole model, and serving never fails on a stranger."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from data_checks.sources.synthetic import BatchOptions, SyntheticShop
from models.evaluate import evaluate, top_k
from models.pyfunc import recommend
from flows.settings import Settings
from models.train import Recommender, TrainConfig, prepare, train
from tests.conftest import TINY_SHOP

CONFIG = TrainConfig(epochs=6, batch_size=256, dim=16)


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return SyntheticShop(0, TINY_SHOP)


@pytest.fixture(scope="module")
def history(shop) -> pd.DataFrame:
    return pd.concat([shop.week(w) for w in range(3)], ignore_index=True)


@pytest.fixture(scope="module")
def champion(shop, history) -> Recommender:
    return train(prepare(history, shop.catalog(False), CONFIG, None), history)


def test_loss_falls_and_ranking_beats_an_untrained_model(shop, history, champion):
    losses = [h["loss"] for h in champion.history]
    assert losses[-1] < losses[0] * 0.9
    holdout = shop.week(3)
    users = pd.Index(history["user_id"].unique())
    untrained = prepare(history, shop.catalog(False), CONFIG, None)
    trained_recall = evaluate(champion, holdout, users, 20).recall
    assert trained_recall > evaluate(untrained, holdout, users, 20).recall + 0.05
    assert trained_recall > 20 / TINY_SHOP.n_items  # better than a random ranker


def test_warm_start_grows_tables_and_keeps_every_old_row(shop, champion):
    drifted = shop.week(4, BatchOptions.full_drift())
    grown = prepare(drifted, shop.catalog(True), TrainConfig(**{**CONFIG.__dict__, "init_from": "champion"}), champion)
    assert len(grown.items) == len(champion.items) + TINY_SHOP.n_new_items
    assert len(grown.users) >= len(champion.users)
    n_users, n_items = len(champion.users), len(champion.items)
    assert torch.equal(grown.model.user_embedding.weight[:n_users], champion.model.user_embedding.weight)
    assert torch.equal(grown.model.item_embedding.weight[:n_items], champion.model.item_embedding.weight)
    assert grown.items.ids[: n_items - 1] == champion.items.ids  # old ids keep their rows


def test_a_new_item_has_a_vector_before_anyone_buys_it(shop, champion):
    grown = prepare(shop.week(3).iloc[:0], shop.catalog(True), CONFIG, champion)
    new_item = shop.catalog(True)["item_id"].iloc[-1]
    assert new_item not in champion.items
    row = torch.as_tensor(grown.items.encode([new_item]))
    assert grown.model.item_embedding.weight[row].abs().sum() == 0  # no id signal yet...
    assert grown.model.item_vectors(row).abs().sum() > 0  # ...but category and price place it


def test_a_new_user_is_placed_by_their_history(shop, champion):
    newcomer = pd.DataFrame(
        {"user_id": ["newcomer"] * 3, "item_id": list(champion.items.ids[:3]),
         "event_time": pd.Timestamp("2026-03-01", tz="UTC"), "price": 2.0}
    )
    grown = prepare(newcomer, shop.catalog(False), CONFIG, champion)
    row = torch.as_tensor(grown.users.encode(["newcomer"]))
    assert (grown.model.user_history[row] > 0).sum() == 3
    assert grown.model.user_vectors(row).abs().sum() > 0


def test_checkpoint_round_trip_scores_the_same(tmp_path, champion):
    path = champion.save(tmp_path / "model.pt")
    loaded = Recommender.load(path)
    users = pd.Series(champion.users.ids[:5])
    items_a, scores_a = top_k(champion, users, 10)
    items_b, scores_b = top_k(loaded, users, 10)
    assert (items_a == items_b).all()
    assert scores_a == pytest.approx(scores_b)
    assert loaded.steps == champion.steps and loaded.optimizer_state is not None


def test_recommend_serves_known_and_unknown_users(champion):
    out = recommend(champion, pd.DataFrame({"user_id": [champion.users.ids[0], "stranger"], "k": [5, 3]}))
    assert list(out.columns) == ["user_id", "rank", "item_id", "score"]
    assert out.groupby("user_id").size().to_dict() == {champion.users.ids[0]: 5, "stranger": 3}
    stranger = out[out["user_id"] == "stranger"]["item_id"].tolist()
    assert stranger == champion.item_counts.nlargest(3).index.tolist()  # the popularity fallback
    with pytest.raises(ValueError, match="k must be between"):
        recommend(champion, pd.DataFrame({"user_id": ["x"], "k": [0]}))
    with pytest.raises(ValueError, match="user_id"):
        recommend(champion, pd.DataFrame({"customer": ["x"]}))


def test_a_warm_start_learns_the_new_week_and_keeps_the_old(shop, history, champion):
    """Fine-tuning on a drifted week plus a replay sample gains on the new data and stays within
    a tolerance of the champion on a week like the ones it knew."""
    drifted = shop.week(3, BatchOptions.full_drift())
    after = shop.week(4, BatchOptions.full_drift())
    old_like = shop.week(5)  # same distribution as the champion's training weeks
    defaults = Settings()
    replay = history.sample(n=min(len(history), int(len(drifted) * defaults.replay_ratio)), random_state=0)
    config = TrainConfig(
        **{**CONFIG.__dict__, "init_from": "champion", "epochs": defaults.finetune_epochs, "learning_rate": defaults.finetune_learning_rate}
    )
    tuned = train(prepare(drifted, shop.catalog(True), config, champion, replay=replay), pd.concat([drifted, replay]))
    users_new = pd.Index(pd.concat([history, drifted])["user_id"].unique())
    users_old = pd.Index(history["user_id"].unique())
    assert evaluate(tuned, after, users_new, 20).recall > evaluate(champion, after, users_new, 20).recall + 0.02
    assert evaluate(tuned, old_like, users_old, 20).recall > evaluate(champion, old_like, users_old, 20).recall - 0.05


def test_a_new_items_neighbours_share_its_category_more_often_than_chance(shop, champion):
    catalog = shop.catalog(True)
    grown = prepare(shop.week(3).iloc[:0], catalog, CONFIG, champion)
    category = catalog.set_index("item_id")["category"]
    new_items = [i for i in catalog["item_id"] if i not in champion.items]
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(grown.model.item_vectors(torch.arange(1, len(grown.items))), dim=-1)
    ids = grown.items.ids
    same = []
    for item in new_items:
        row = grown.items.encode([item])[0] - 1
        similarity = vectors @ vectors[row]
        similarity[row] = -2.0
        neighbours = similarity.topk(10).indices.tolist()
        same.append(sum(category[ids[n]] == category[item] for n in neighbours) / 10)
    chance = (category.value_counts(normalize=True) ** 2).sum()  # two random items share a category
    assert sum(same) / len(same) > 2 * chance
