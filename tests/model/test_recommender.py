"""Model behaviour: it learns, a warm start keeps what it knew, new items and users get vectors,
a checkpoint is the whole model, and serving never fails on a stranger."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from data_checks.sources.synthetic import BatchOptions, SyntheticShop
from models.evaluate import evaluate, top_k
from models.pyfunc import recommend
from models.settings import Settings
from models.recommender import Recommender, TrainConfig
from models.train import prepare, train
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
    losses = [h["loss"] for h in champion.training.history]
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
    assert loaded.training.steps == champion.training.steps and loaded.training.optimizer_state is not None


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


def _memory(r: Recommender, user: str) -> tuple[dict[str, float], float]:
    row = r.users.encode([user])[0]
    items, sums = r.model.memory_items[row].tolist(), r.model.memory_sums[row].tolist()
    return {r.items.decode([i])[0]: pytest.approx(v) for i, v in zip(items, sums) if i > 0}, pytest.approx(float(r.model.memory_baskets[row]))


def test_basket_memory_decays_per_newer_basket_and_folds_updates_in():
    catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "category": "x", "price": 1.0})
    config = TrainConfig(repeat_slots=2, dim=4, basket_decay=0.5)
    # u1's baskets, oldest first (same time: by order id): o1 {a, b} (a on two lines counts once), o2 {a}, o3 {c}.
    # Weights 0.25, 0.5, 1: a = 0.75, b = 0.25, c = 1; the decayed basket count is 1.75.
    first = prepare(_rows([("u1", "a", "o1"), ("u1", "a", "o1"), ("u1", "a", "o2"), ("u1", "b", "o1"), ("u1", "c", "o3")]), catalog, config, None)
    assert _memory(first, "u1") == ({"c": 1.0, "a": 0.75}, 1.75)  # two slots: the largest sums
    later = prepare(_rows([("u1", "c", "o4"), ("u1", "c", "o5"), ("u2", "b", "o6")], day="2026-01-12"), catalog, config, first)
    # Two new baskets decay the old sums by 0.25 (c 0.25, a 0.1875) and add 0.5 and 1 for c.
    assert _memory(later, "u1") == ({"c": 1.75, "a": 0.1875}, 1.75 * 0.25 + 1.5)
    assert _memory(later, "u2") == ({"b": 1.0}, 1.0)


def test_folding_in_updates_gives_the_memory_of_all_baskets_at_once(shop, history):
    catalog = shop.catalog(False)
    config = TrainConfig(repeat_slots=TINY_SHOP.n_items, dim=4)  # every item kept: folding is exact
    weeks = [history[history["event_time"] < history["event_time"].quantile(q)] for q in (0.3, 0.7)] + [history]
    folded = prepare(weeks[0], catalog, config, None)
    for earlier, rows in zip(weeks, weeks[1:]):
        folded = prepare(rows[rows["event_time"] > earlier["event_time"].max()], catalog, config, folded)
    whole = prepare(history, catalog, config, None)
    for user in history["user_id"].drop_duplicates().sample(40, random_state=0):
        assert _memory(folded, user)[0] == {k: v.expected for k, v in _memory(whole, user)[0].items()}
        assert _memory(folded, user)[1] == _memory(whole, user)[1].expected
    order = folded.items.encode(whole.items.ids)
    assert torch.allclose(folded.model.item_recent[order], whole.model.item_recent[1:], rtol=1e-4)


def test_memory_scores_are_own_shares_neighbours_and_recent_popularity():
    catalog = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "category": "x", "price": 1.0})
    config = TrainConfig(dim=4, neighbours=1, neighbour_share=0.5, popularity_share=0.1)
    r = prepare(_rows([("u1", "a", "o1"), ("u1", "b", "o1"), ("u2", "a", "o2"), ("u2", "c", "o2"), ("u3", "d", "o3")]), catalog, config, None)
    users = torch.as_tensor(r.users.encode(["u1", "u3"]))
    columns = r.items.encode(["a", "b", "c", "d"])
    memory = r.model.memory_scores(users)[:, columns]
    # u1 = {a, b}, u2 = {a, c}: cosine 0.5, u1's one neighbour is u2 (a +0.5, c +0.5); u3 = {d}
    # shares nothing, so nobody lends u3 anything. Popularity: a bought twice, the rest once.
    popularity = 0.1 * torch.tensor([1.0, 0.5, 0.5, 0.5])
    assert torch.allclose(memory[0], torch.tensor([1.5, 1.0, 0.5, 0.0]) + popularity)
    assert torch.allclose(memory[1], torch.tensor([0.0, 0.0, 0.0, 1.0]) + popularity)
    plain = r.model.score_all(users)
    r.model.memory_weight.fill_(2.0)
    boosted = r.model.score_all(users)
    assert torch.allclose((boosted - plain)[:, columns], 2.0 * memory)


def test_memory_weight_is_chosen_on_held_out_data(champion, history, shop):
    from models.train import calibrate_memory_weight

    # The synthetic shop re-buys 30% of basket lines: the held-out week prefers a positive weight.
    holdout, seen = shop.week(3), pd.Index(history["user_id"].unique())
    scores = calibrate_memory_weight(champion, lambda r: evaluate(r, holdout, seen, 20).recall)
    assert float(champion.model.memory_weight) == max(scores, key=lambda w: (scores[w], -w)) > 0
    assert scores[float(champion.model.memory_weight)] > scores[0.0]
    champion.model.memory_weight.fill_(0.0)  # the module-scoped champion is shared


def test_memoized_memory_scores_follow_the_memory_and_end_with_the_block(champion, history, monkeypatch):
    model = champion.model
    users = torch.as_tensor(champion.users.encode(history["user_id"].unique()[:30]))
    plain = model.memory_scores(users)
    computed = []
    chunks = model._personal_chunks  # every computation of the users' personal memory goes through it
    monkeypatch.setattr(model, "_personal_chunks", lambda u: computed.append(len(u)) or chunks(u))
    with model.memoized_memory():
        first = model.memory_scores(users)
        assert torch.equal(model.memory_scores(users), first) and torch.equal(first, plain)
        assert computed == [30]  # the second scoring reused the first's
        saved = model.memory_sums.clone()
        model.memory_sums.mul_(2.0)  # the memory changed: its scores are computed again
        changed = model.memory_scores(users)
        assert computed == [30, 30] and not torch.equal(changed, first)
        model.memory_sums.copy_(saved)
    assert model._memo is None
    assert torch.equal(model.memory_scores(users), plain)
    assert computed == [30, 30, 30]


def test_a_checkpoint_with_the_old_purchase_count_memory_loads_with_an_empty_memory(champion, tmp_path, caplog):
    path = champion.save(tmp_path / "model.pt")
    state = torch.load(path, weights_only=True)
    memory = {k: state["state_dict"].pop(k) for k in ("memory_items", "memory_sums", "memory_baskets", "item_recent", "memory_weight")}
    for key in ("consumed_indptr", "consumed_items"):  # nor did it keep consumed items
        state["state_dict"].pop(key)
    state["state_dict"] |= {"user_top_items": memory["memory_items"][:, :50], "user_top_counts": memory["memory_sums"][:, :50], "repeat_weight": torch.tensor(0.5)}
    state["model_args"] = {k: v for k, v in state["model_args"].items() if k in ("n_users", "n_items", "n_categories", "dim", "history_length", "text_dim")} | {"repeat_slots": 50}
    torch.save(state, path)
    with caplog.at_level("WARNING"):
        old = Recommender.load(path)
    assert "before the basket memory" in caplog.text
    assert float(old.model.memory_weight) == 0.0 and not old.model.memory_items.any() and not old.model.memory_baskets.any()
    users = torch.as_tensor(old.users.encode(champion.users.ids[:5]))
    with torch.no_grad():
        user_vec, item_vec = old.model(users, torch.arange(len(old.items)))
    assert torch.allclose(old.model.score_all(users)[:, 1:], (user_vec @ item_vec.T)[:, 1:])  # its towers alone
    # Its next update folds the new baskets into the empty memory.
    rows = _rows([(champion.users.ids[0], champion.items.ids[0], "new-order")], day="2031-01-01")
    later = prepare(rows, pd.DataFrame({"item_id": [], "category": [], "price": []}), old.config, old)
    assert _memory(later, champion.users.ids[0]) == ({champion.items.ids[0]: 1.0}, 1.0)


def test_a_warm_start_keeps_how_its_memory_was_built_and_scores_it_as_configured(champion, shop):
    config = TrainConfig(**{**CONFIG.__dict__, "basket_decay": 0.5, "repeat_slots": 7, "neighbours": 3, "neighbour_share": 0.2, "popularity_share": 0.0})
    grown = prepare(shop.week(3), shop.catalog(False), config, champion)
    args = grown.model.args
    assert (args.basket_decay, args.repeat_slots) == (champion.model.args.basket_decay, champion.model.args.repeat_slots)
    assert (args.neighbours, args.neighbour_share, args.popularity_share) == (3, 0.2, 0.0)
    assert champion.model.args.neighbours == CONFIG.neighbours  # the champion itself is unchanged
