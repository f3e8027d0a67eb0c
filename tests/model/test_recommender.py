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
    """Fine-tuning on a drifted week plus a replay sample (the default fine-tune) gains on the new
    data and stays within the gate's forgetting tolerance of the champion on a week like the
    ones it knew (measured: -0.073 with replay 1.0 and 2 passes, -0.02 with replay 3.0 and 4)."""
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
    forgot = evaluate(champion, old_like, users_old, 20).recall - evaluate(tuned, old_like, users_old, 20).recall
    assert forgot < defaults.max_forgetting


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


def _rows(pairs: list[tuple[str, str, str]], day: str = "2026-01-05") -> pd.DataFrame:
    """(user, item, order) purchases on one day."""
    return pd.DataFrame(
        {
            "user_id": [p[0] for p in pairs], "item_id": [p[1] for p in pairs], "order_id": [p[2] for p in pairs],
            "event_time": pd.Timestamp(day, tz="UTC"), "price": 1.0,
        }
    )


def test_repeat_memory_counts_purchases_and_merges_updates():
    catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "category": "x", "price": 1.0})
    config = TrainConfig(repeat_slots=2, dim=4)
    # u1 buys a in two orders (twice on one order's two lines counts once), b once, c once.
    first = prepare(_rows([("u1", "a", "o1"), ("u1", "a", "o1"), ("u1", "a", "o2"), ("u1", "b", "o1"), ("u1", "c", "o3")]), catalog, config, None)
    memory = lambda r, user: {  # noqa: E731
        r.items.decode([i])[0]: float(c)
        for i, c in zip(r.model.user_top_items[r.users.encode([user])[0]].tolist(), r.model.user_top_counts[r.users.encode([user])[0]].tolist())
        if i > 0
    }
    assert memory(first, "u1") == {"a": 2.0, "b": 1.0}  # two slots: the most bought, ties by item row
    later = prepare(_rows([("u1", "c", "o4"), ("u1", "c", "o5"), ("u2", "b", "o6")], day="2026-01-12"), catalog, config, first)
    # c's first purchase fell out of the two slots, so it counts 2 now, not 3: the memory keeps
    # the most bought items, not every count. b (1) drops out.
    assert memory(later, "u1") == {"a": 2.0, "c": 2.0}
    assert memory(later, "u2") == {"b": 1.0}


def test_repeat_weight_raises_the_users_own_items_and_is_chosen_on_held_out_data(champion, history, shop):
    users = torch.as_tensor(champion.users.encode(history["user_id"].unique()[:50]))
    model = champion.model
    plain = model.score_all(users)
    model.repeat_weight.fill_(0.5)
    boosted = model.score_all(users)
    own = torch.zeros_like(plain, dtype=torch.bool).scatter_(1, model.user_top_items[users], model.user_top_counts[users] > 0)
    own[:, 0] = False
    assert own.any()
    # Exactly the user's own items move, by 0.5 * log(1 + purchases).
    delta, own = (boosted - plain)[:, 1:], own[:, 1:]  # column 0 is padding (-inf in both)
    assert (delta[~own] == 0).all() and (delta[own] > 0).all()
    model.repeat_weight.fill_(0.0)
    # The synthetic shop re-buys 30% of basket lines: the held-out week prefers a positive weight.
    from models.train import calibrate_repeat_weight

    holdout, seen = shop.week(3), pd.Index(history["user_id"].unique())
    scores = calibrate_repeat_weight(champion, lambda r: evaluate(r, holdout, seen, 20).recall)
    assert float(model.repeat_weight) == max(scores, key=lambda w: (scores[w], -w)) > 0
    assert scores[float(model.repeat_weight)] > scores[0.0]
    model.repeat_weight.fill_(0.0)  # the module-scoped champion is shared
