"""Sparse id-table training (large catalogs): the touched-row forward gives the vectors the whole
table gives and gradients of the touched rows alone, the lazy Adam trains as the dense one does
when every step touches every row, its checkpoints resume (and either optimizer's resume with the
other), and small catalogs and data parallel training keep the dense path."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from data_checks.sources.synthetic import SyntheticShop
from models import train as train_module
from models.evaluate import evaluate
from models.recommender import Recommender, TrainConfig
from models.train import prepare, train, uses_sparse_tables
from models.two_tower import ModelArgs, TwoTower
from tests.conftest import TINY_SHOP

DENSE, SPARSE = 10**12, 0  # SPARSE_TABLE_ROWS that force each path on the tiny shop


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return SyntheticShop(1, TINY_SHOP)


@pytest.fixture
def forward_paths(monkeypatch) -> list[bool]:
    """Whether each training step took the sparse forward."""
    paths = []
    forward = TwoTower.forward

    def spy(self, users, items, sparse=False):
        if self.training:
            paths.append(sparse)
        return forward(self, users, items, sparse=sparse)

    monkeypatch.setattr(TwoTower, "forward", spy)
    return paths


def _tiny_model() -> TwoTower:
    torch.manual_seed(0)
    model = TwoTower(ModelArgs(n_users=30, n_items=25, n_categories=4, dim=8, history_length=5, repeat_slots=0))
    with torch.no_grad():
        history = torch.randint(1, 25, (30, 5))
        history[:10, :2] = 0  # empty slots
        history[10] = 0  # a user with no history
        model.user_history.copy_(history)
        model.item_category.copy_(torch.randint(0, 4, (25,)))
        model.item_log_price.normal_()
        model.item_text.normal_()
    return model


def test_the_touched_forward_gives_the_whole_tables_vectors_and_gradients_of_the_touched_rows_only():
    model = _tiny_model()
    users, items = torch.tensor([3, 10, 3, 17]), torch.tensor([4, 4, 9, 21])
    dense_users, dense_items = model(users, items)
    sparse_users, sparse_items = model(users, items, sparse=True)
    torch.testing.assert_close(sparse_users, dense_users)
    torch.testing.assert_close(sparse_items, dense_items)

    (sparse_users.sum() + sparse_items.square().sum()).backward()
    item_grad, user_grad = model.item_embedding.weight.grad, model.user_embedding.weight.grad
    assert item_grad.is_sparse and user_grad.is_sparse
    touched = set(model.user_history[users].flatten().tolist()) | set(items.tolist())
    assert set(item_grad.coalesce().indices()[0].tolist()) == touched - {0}  # never the padding row
    assert set(user_grad.coalesce().indices()[0].tolist()) == {3, 10, 17}


def test_sparse_tables_only_above_the_threshold_and_in_one_process():
    def args(n_users: int, n_items: int) -> ModelArgs:
        return ModelArgs(n_users=n_users, n_items=n_items, n_categories=1)

    assert not uses_sparse_tables(args(4_372, 3_685), world=1)  # Online Retail keeps the dense path
    assert not uses_sparse_tables(args(1_500, 601), world=1)  # so does the demo shop
    assert uses_sparse_tables(args(100_000, 100_001), world=1)
    assert not uses_sparse_tables(args(100_000, 100_001), world=2)  # DDP averages dense gradients only


def test_a_small_catalog_trains_on_the_dense_path(shop, forward_paths):
    rows = shop.week(0)
    train(prepare(rows, shop.catalog(False), TrainConfig(epochs=1, batch_size=256, dim=8, device="cpu"), None), rows, progress=False)
    assert forward_paths and not any(forward_paths)


def test_the_sparse_path_trains_loss_falls_and_ranking_beats_an_untrained_model(shop, monkeypatch, forward_paths):
    monkeypatch.setattr(train_module, "SPARSE_TABLE_ROWS", SPARSE)
    rows = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    config = TrainConfig(epochs=6, batch_size=256, dim=16, device="cpu")
    untrained = prepare(rows, shop.catalog(False), config, None)
    trained = train(prepare(rows, shop.catalog(False), config, None), rows, progress=False)
    assert forward_paths and all(forward_paths)
    losses = [h["loss"] for h in trained.training.history]
    assert losses[-1] < losses[0] - 0.5
    users, week = pd.Index(rows["user_id"].unique()), shop.week(2)
    with untrained.model.without_memory(), trained.model.without_memory():  # the towers alone
        assert evaluate(trained, week, users, 20).recall > evaluate(untrained, week, users, 20).recall + 0.05


def test_sparse_training_matches_dense_training_when_every_step_touches_every_row(shop, monkeypatch):
    """One batch an epoch holds every row, so every step touches every user and every bought
    item: lazy Adam's skipped rows are the rows dense Adam leaves alone too (zero gradient ever)."""
    rows = shop.week(0)
    config = TrainConfig(epochs=5, batch_size=len(rows), dim=8, device="cpu")
    trained = {}
    for name, threshold in (("dense", DENSE), ("sparse", SPARSE)):
        monkeypatch.setattr(train_module, "SPARSE_TABLE_ROWS", threshold)
        trained[name] = train(prepare(rows, shop.catalog(False), config, None), rows, progress=False)
    dense, sparse = trained["dense"], trained["sparse"]
    assert sparse.training.steps == dense.training.steps == 5
    assert [h["loss"] for h in sparse.training.history] == pytest.approx([h["loss"] for h in dense.training.history], rel=1e-5)
    for name, tensor in dense.model.state_dict().items():
        torch.testing.assert_close(sparse.model.state_dict()[name], tensor, atol=1e-5, rtol=1e-4, msg=name)


def _interrupted_and_resumed(shop, tmp_path, monkeypatch, first: int, then: int) -> tuple[Recommender, Recommender]:
    """Train 2 epochs with SPARSE_TABLE_ROWS ``first``, resume to 4 with ``then``; also 4 at once with ``then``."""
    rows = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    checkpoint = tmp_path / "training.pt"
    monkeypatch.setattr(train_module, "SPARSE_TABLE_ROWS", first)
    train(prepare(rows, shop.catalog(False), TrainConfig(epochs=2, batch_size=256, dim=8, device="cpu"), None),
          rows, checkpoint_path=checkpoint, progress=False)
    monkeypatch.setattr(train_module, "SPARSE_TABLE_ROWS", then)
    config = TrainConfig(epochs=4, batch_size=256, dim=8, device="cpu")
    resumed = train(prepare(rows, shop.catalog(False), config, None), rows, checkpoint_path=checkpoint, progress=False)
    uninterrupted = train(prepare(rows, shop.catalog(False), config, None), rows, progress=False)
    return resumed, uninterrupted


def test_a_sparse_training_resumes_from_its_checkpoint_as_if_uninterrupted(shop, tmp_path, monkeypatch):
    resumed, uninterrupted = _interrupted_and_resumed(shop, tmp_path, monkeypatch, SPARSE, SPARSE)
    assert resumed.training.steps == uninterrupted.training.steps and resumed.training.epochs_done == 4
    assert [h["loss"] for h in resumed.training.history] == pytest.approx([h["loss"] for h in uninterrupted.training.history], rel=1e-6)
    for name, tensor in uninterrupted.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("first, then", [(DENSE, SPARSE), (SPARSE, DENSE)], ids=["dense-then-sparse", "sparse-then-dense"])
def test_a_checkpoint_of_either_path_resumes_on_the_other(shop, tmp_path, monkeypatch, first, then):
    """Old checkpoints hold dense Adam's state; the lazy Adam keeps its layout."""
    resumed, _ = _interrupted_and_resumed(shop, tmp_path, monkeypatch, first, then)
    assert resumed.training.epochs_done == 4
    state = resumed.training.optimizer_state["state"]
    assert all(int(state[index]["step"]) == resumed.training.steps for index in state)  # the moments went on, not restarted
    assert resumed.training.optimizer_state["state"][0]["exp_avg"].shape == resumed.model.user_embedding.weight.shape
    losses = [h["loss"] for h in resumed.training.history]
    assert losses == sorted(losses, reverse=True)
