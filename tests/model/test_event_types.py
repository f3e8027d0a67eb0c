"""Event types in the model: what each counts for in training, what evaluation scores, and
items already consumed.

Risks guarded: views trained on as purchases, a metric that counts views as hits, a consumed
item recommended again when the shop said not to (or forgotten by an update or a reload), and
a setting that would train a model on nothing it is scored on.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from models.settings import Settings
from models.evaluate import evaluate
from models.recommender import Recommender, TrainConfig
from models.train import event_weights, prepare, train
from models.two_tower import sampled_softmax_loss

CONFIG = TrainConfig(epochs=2, batch_size=64, dim=8)
EMPTY_CATALOG = pd.DataFrame({"item_id": [], "category": [], "price": []})


def events(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """(user, item, event type, day) rows; no order, price, quantity or country."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "event_type": [r[2] for r in rows],
            "event_time": pd.to_datetime([r[3] for r in rows], utc=True),
        }
    )


def test_each_row_weighs_what_its_event_type_counts_for():
    frame = events([("u", "a", "view", "2026-01-05"), ("u", "b", "purchase", "2026-01-05"), ("u", "c", "add_to_cart", "2026-01-05")])
    assert event_weights(frame, CONFIG.event_weights).tolist() == [0.1, 1.0, 0.5]
    assert event_weights(frame.drop(columns="event_type"), CONFIG.event_weights).tolist() == [1.0, 1.0, 1.0]  # purchases
    with pytest.raises(ValueError, match="outside the contract"):
        event_weights(frame, {"wishlist": 1.0})


def test_the_weighted_loss_is_the_weighted_mean_of_each_rows_loss():
    torch.manual_seed(0)
    users, items = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1), torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    ids, log_q = torch.arange(6), torch.zeros(6)
    each = torch.stack([sampled_softmax_loss(users, items, ids, log_q, 0.1, weights=torch.eye(6)[i]) for i in range(6)])
    weights = torch.tensor([1.0, 0.1, 0.1, 0.5, 1.0, 0.0])
    weighted = sampled_softmax_loss(users, items, ids, log_q, 0.1, weights=weights)
    assert weighted == pytest.approx(float((each * weights).sum() / weights.sum()), rel=1e-5)
    assert sampled_softmax_loss(users, items, ids, log_q, 0.1, weights=torch.ones(6)) == pytest.approx(float(each.mean()), rel=1e-5)


def test_a_basket_memory_counts_a_view_for_its_weight_and_an_item_for_its_strongest_event():
    frame = events([
        ("u", "a", "view", "2026-01-05"), ("u", "a", "purchase", "2026-01-05"),  # one day: bought counts
        ("u", "b", "view", "2026-01-06"),  # a day of views: a tenth of a basket
    ])
    model = prepare(frame, EMPTY_CATALOG, CONFIG, None)
    row = model.users.encode(["u"])[0]
    sums = dict(zip(model.items.decode(model.model.memory_items[row].numpy()), model.model.memory_sums[row].tolist()))
    # Two baskets, the newer (views of b) counting 0.1: a's basket is one newer basket old.
    assert sums["a"] == pytest.approx(0.8) and sums["b"] == pytest.approx(0.1)
    assert float(model.model.memory_baskets[row]) == pytest.approx(0.8 + 0.1)


def test_a_type_of_weight_zero_adds_nothing_to_the_memory():
    frame = events([("u", "a", "view", "2026-01-05"), ("u", "b", "purchase", "2026-01-06")])
    config = TrainConfig(**{**CONFIG.__dict__, "event_weights": {**CONFIG.event_weights, "view": 0.0}})
    model = prepare(frame, EMPTY_CATALOG, config, None)
    row = model.users.encode(["u"])[0]
    assert model.items.decode(model.model.memory_items[row][model.model.memory_items[row] > 0].numpy()).tolist() == ["b"]
    assert float(model.model.memory_baskets[row]) == pytest.approx(1.0)


def test_evaluation_scores_the_target_event_only():
    history = events([(f"u{i}", f"i{i % 4}", "purchase", "2026-01-05") for i in range(12)])
    model = train(prepare(history, EMPTY_CATALOG, CONFIG, None), history, progress=False)
    # u0 views i1 and buys i2: only the purchase is relevant to the default target.
    holdout = events([("u0", "i1", "view", "2026-01-12"), ("u0", "i2", "purchase", "2026-01-12"), ("u1", "i3", "view", "2026-01-12")])
    scored = evaluate(model, holdout, pd.Index(["u0", "u1"]), k=4)
    assert scored.users == 1 and scored.user_ids == ("u0",)
    viewed = evaluate(model, holdout, pd.Index(["u0", "u1"]), k=4, target_event="view")
    assert viewed.users == 2 and viewed.user_ids == ("u0", "u1")


def test_consumed_items_are_never_recommended_when_the_setting_says_so(tmp_path):
    bought = [("u0", "i0", "purchase", "2026-01-05"), ("u0", "i1", "view", "2026-01-05"), ("u1", "i2", "purchase", "2026-01-05")]
    history = events(bought + [(f"u{i}", f"i{i % 5}", "purchase", "2026-01-06") for i in range(2, 20)])
    config = TrainConfig(**{**CONFIG.__dict__, "recommend_consumed": False})
    model = train(prepare(history, EMPTY_CATALOG, config, None), history, progress=False)

    def blocked(recommender: Recommender, user: str) -> set[str]:
        scores = recommender.model.score_all(torch.as_tensor(recommender.users.encode([user])))[0]
        return set(recommender.items.decode(torch.nonzero(torch.isinf(scores)).flatten().numpy())) - {""}

    assert blocked(model, "u0") == {"i0"}  # bought, not the item only viewed
    assert blocked(model, "u1") == {"i2"}
    reloaded = Recommender.load(model.save(tmp_path / "m.pt"))
    assert blocked(reloaded, "u0") == {"i0"}
    # An update keeps the old pairs, adds its own, and grows with new users.
    later = prepare(events([("u0", "i3", "purchase", "2026-01-20"), ("new", "i0", "purchase", "2026-01-20")]), EMPTY_CATALOG, config, reloaded)
    assert blocked(later, "u0") == {"i0", "i3"} and blocked(later, "new") == {"i0"} and blocked(later, "u1") == {"i2"}
    # Recommending consumed items again is the default: nothing is blocked then.
    again = prepare(events([("u0", "i4", "purchase", "2026-01-27")]), EMPTY_CATALOG, CONFIG, later)
    assert blocked(again, "u0") == set()
    assert not again.model.args.exclude_consumed and again.model.args.n_consumed == later.model.args.n_consumed + 1


def test_a_target_event_of_weight_zero_is_refused():
    with pytest.raises(ValidationError, match="never trained on what it is scored on"):
        Settings(purchase_weight=0)
    assert Settings(view_weight=0, target_event="purchase").event_weights()["view"] == 0
