"""Training mechanics: data-parallel training matches one process, a killed training resumes
where it stopped and ends where an uninterrupted one does, early stopping keeps the best epoch,
and the title cache encodes each title once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from data_checks.sources.synthetic import SyntheticShop
from models.settings import Settings
from models import text
from models.evaluate import evaluate
from models.recommender import Recommender, TrainConfig
from models.train import lr_factor, prepare, train
from tasks.training import TrainingData, train_challenger, trained_on
from tests.conftest import TINY_SHOP

ROOT = Path(__file__).resolve().parents[2]
TRAINING_FIELDS = {"scratch_epochs", "batch_size", "embedding_dim", "use_title_text", "early_stopping_patience"}


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return SyntheticShop(1, TINY_SHOP)


def _assert_same_weights(a: Recommender, b: Recommender, atol: float) -> None:
    for name, tensor in a.model.state_dict().items():
        other = b.model.state_dict()[name]
        assert torch.allclose(tensor, other, atol=atol), f"{name}: max difference {(tensor - other).abs().max():.2e}"


@pytest.mark.slow
def test_two_process_data_parallel_training_matches_one_process(tmp_path, shop):
    """torchrun with 2 gloo processes on the CPU: each takes half of every batch's users; the
    averaged gradients must give the single-process model within float tolerance."""
    rows = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    config = TrainConfig(epochs=3, batch_size=256, dim=16, device="cpu")
    rows = rows.iloc[: len(rows) - len(rows) % 256 + 128]  # the last batch splits evenly in two
    prepared_path = prepare(rows, shop.catalog(False), config, None).save(tmp_path / "prepared.pt")
    rows[["user_id", "item_id"]].to_parquet(tmp_path / "rows.parquet")

    single = train(Recommender.load(prepared_path), rows, progress=False)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "models.distributed", str(prepared_path), str(tmp_path / "rows.parquet"), str(tmp_path / "ddp.pt"),
         "--backend", "gloo"],
        check=True, cwd=ROOT, env=env, timeout=300,
    )
    parallel = Recommender.load(tmp_path / "ddp.pt")
    assert parallel.training.steps == single.training.steps and len(parallel.training.history) == 3
    assert [h["loss"] for h in parallel.training.history] == pytest.approx([h["loss"] for h in single.training.history], rel=1e-3)
    _assert_same_weights(single, parallel, atol=1e-3)
    users = pd.Index(rows["user_id"].unique())
    week = shop.week(2)
    assert evaluate(parallel, week, users, 20).recall == pytest.approx(evaluate(single, week, users, 20).recall, abs=0.01)
    assert not (tmp_path / "ddp.progress.pt").exists()  # the resume checkpoint goes when training ends


def _training_data(shop: SyntheticShop) -> TrainingData:
    rows = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    holdout = shop.week(2)
    return TrainingData(
        new=rows, replay=rows.iloc[0:0], holdout=holdout, eval_users=pd.Index(rows["user_id"].unique()),
        catalog=shop.catalog(False), batch_ids=[1, 2],
    )


KILLED_TRAINING = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from data_checks.sources.synthetic import SyntheticShop
    from models.settings import Settings
    from tasks.training import train_challenger
    from tests.conftest import TINY_SHOP
    from tests.model.test_training import _training_data

    settings = Settings(home=Path(sys.argv[1]), scratch_epochs=6, batch_size=256, embedding_dim=16,
                        use_title_text=False, early_stopping_patience=99)

    def hang_after_epoch_2(record):
        if record["epoch"] == 2:
            print("epoch 2 checkpointed", flush=True)
            time.sleep(600)  # the parent kills us here

    train_challenger.fn(_training_data(SyntheticShop(1, TINY_SHOP)), None, settings, on_epoch_end=hang_after_epoch_2)
    """
)


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_last_checkpoint(tmp_path, shop, caplog):
    settings = Settings(
        home=tmp_path / "home", scratch_epochs=6, batch_size=256, embedding_dim=16, use_title_text=False, early_stopping_patience=99
    )
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_TRAINING, str(settings.home)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout.readline().strip() == "epoch 2 checkpointed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    [in_progress] = settings.checkpoints_dir.glob("training-*.pt")
    assert Recommender.load(in_progress).training.epochs_done == 2
    assert not list(settings.checkpoints_dir.glob("challenger-*.pt"))  # nothing half-done was published

    with caplog.at_level("INFO", logger="models.train"):
        resumed = train_challenger.fn(_training_data(shop), None, settings)  # the retry
    assert "resuming from" in caplog.text and "after epoch 2" in caplog.text
    assert resumed.epochs == 6
    assert not in_progress.exists()

    uninterrupted_settings = Settings(**{**settings.model_dump(include=TRAINING_FIELDS), "home": tmp_path / "other"})
    uninterrupted = train_challenger.fn(_training_data(shop), None, uninterrupted_settings)
    a, b = Recommender.load(resumed.checkpoint_path), Recommender.load(uninterrupted.checkpoint_path)
    assert [h["loss"] for h in a.training.history] == pytest.approx([h["loss"] for h in b.training.history], rel=1e-5)
    # CPU kernels may sum in another order from run to run: equal up to float noise.
    _assert_same_weights(a, b, atol=1e-4)


@pytest.mark.slow
def test_the_training_task_under_torchrun_trains_the_model_one_process_does(tmp_path, shop, monkeypatch):
    """settings.train_processes=2: fit launches torchrun (two gloo processes here, one per GPU on
    a GPU host) and gets the single-process model back, early stopping and memory weight included."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fields = dict(scratch_epochs=3, batch_size=256, embedding_dim=16, use_title_text=False, device="cpu")
    data = _training_data(shop)
    data.new = data.new.iloc[: len(data.new) - len(data.new) % 256 + 128]  # the last batch splits evenly in two
    one = train_challenger.fn(data, None, Settings(home=tmp_path / "one", **fields))
    epochs = []
    two = train_challenger.fn(data, None, Settings(home=tmp_path / "two", train_processes=2, **fields), on_epoch_end=epochs.append)
    a, b = Recommender.load(one.checkpoint_path), Recommender.load(two.checkpoint_path)
    assert [h["epoch"] for h in epochs] == [1, 2, 3]  # the launch's epochs reach the task's log
    assert [h["loss"] for h in b.training.history] == pytest.approx([h["loss"] for h in a.training.history], rel=1e-3)
    assert (two.epochs, two.best_epoch) == (one.epochs, one.best_epoch)
    assert b.model.memory_weight.item() == pytest.approx(a.model.memory_weight.item())
    _assert_same_weights(a, b, atol=1e-3)
    assert not list((tmp_path / "two" / "checkpoints").glob("torchrun-*"))  # the launch's files are gone


def test_the_device_a_training_ran_on_is_named_in_words():
    assert trained_on("cpu") == "cpu"
    assert trained_on("cpu", 2) == "cpu, 2 processes under torchrun"
    if torch.cuda.is_available():
        assert trained_on("auto") == f"cuda:0 ({torch.cuda.get_device_name(0)})"
        assert trained_on("cuda", 1).startswith("cuda:0 (")
    else:
        assert trained_on("auto") == "cpu"


def test_early_stopping_stops_after_patience_and_keeps_the_best_epoch(shop):
    rows = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    config = TrainConfig(epochs=10, batch_size=256, dim=16, patience=2, device="cpu")
    scores = iter([0.1, 0.3, 0.5, 0.4, 0.2, 0.9])  # before training, then after epochs 1, 2, 3, 4

    def validate(_: Recommender) -> float:
        return next(scores)

    kept = {}

    def remember(record: dict) -> None:
        if record["epoch"] == 2:
            kept["weights"] = {k: v.clone() for k, v in trained_model.state_dict().items()}

    prepared = prepare(rows, shop.catalog(False), config, None)
    trained_model = prepared.model
    trained = train(prepared, rows, validate=validate, on_epoch_end=remember, progress=False)
    assert [h["validation"] for h in trained.training.history] == [0.3, 0.5, 0.4, 0.2]  # two epochs worse than epoch 2: stop
    assert trained.training.best_epoch == 2 and trained.training.best_score == 0.5
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, kept["weights"][name]), name


def test_the_step_budget_and_the_schedule(shop):
    rows = shop.week(0)
    config = TrainConfig(epochs=50, max_steps=12, batch_size=128, dim=8, warmup_steps=4, min_lr_ratio=0.1, learning_rate=0.01, device="cpu")
    trained = train(prepare(rows, shop.catalog(False), config, None), rows, progress=False)
    assert trained.training.steps == 12
    factors = [lr_factor(step, 12, config) for step in range(13)]
    assert factors[0] == pytest.approx(0.25)  # warm-up starts at a quarter of the rate...
    assert factors[:4] == sorted(factors[:4]) and max(factors) == factors[3]  # ...rises for 4 steps...
    assert factors[3:] == sorted(factors[3:], reverse=True)  # ...then decays...
    assert factors[12] == pytest.approx(0.1)  # ...to min_lr_ratio at the last step


def test_title_vectors_are_encoded_once_per_title(tmp_path, monkeypatch):
    calls = []
    real_encode = text.encode

    def counting_encode(titles: list[str], batch_size: int = 256) -> np.ndarray:
        calls.append(list(titles))
        return real_encode(titles, batch_size)

    monkeypatch.setattr(text, "encode", counting_encode)
    first = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["red mug", "blue mug", None]})
    vectors = text.catalog_title_vectors(first, tmp_path)
    assert vectors.shape == (3, text.MODEL_TEXT_DIM)
    assert np.linalg.norm(vectors.loc["a"]) == pytest.approx(1.0, abs=0.5) and not vectors.loc["c"].any()
    assert sorted(calls[0]) == ["blue mug", "red mug"]

    second = pd.DataFrame({"item_id": ["a", "d"], "title": ["red mug", "oak chair"]})
    again = text.catalog_title_vectors(second, tmp_path)
    assert calls[1] == ["oak chair"]  # only the title the cache had not seen
    assert np.allclose(again.loc["a"], vectors.loc["a"])
    red, blue, chair = vectors.loc["a"], vectors.loc["b"], again.loc["d"]
    assert red @ blue > red @ chair  # mugs are closer to mugs than to chairs


def test_the_forgetting_slice_scores_the_towers_alone_and_the_newest_slice_the_whole_model(shop, tmp_path):
    """The basket memory weighs older baskets less by design; the forgetting check is about what
    the fine-tune forgot, so the historical slice is scored without it."""
    from tasks.training import evaluate_models

    data = _training_data(shop)
    data.historical = shop.week(0)
    settings = Settings(home=tmp_path, scratch_epochs=2, batch_size=256, embedding_dim=16, use_title_text=False, device="cpu")
    challenger = train_challenger.fn(data, None, settings)
    evaluation = evaluate_models.fn(challenger, None, data, settings)
    model = Recommender.load(challenger.checkpoint_path)
    assert float(model.model.memory_weight) > 0  # the shop re-buys: the memory is on
    size = len(model.items) - 1
    with model.model.without_memory():
        towers = evaluate(model, data.historical, data.eval_users, settings.eval_k, size)
    whole = evaluate(model, data.historical, data.eval_users, settings.eval_k, size)
    assert float(model.model.memory_weight) > 0  # restored on leaving
    assert towers.recall != whole.recall
    assert evaluation.slices["historical"].challenger.recall == towers.recall
    assert evaluation.slices["newest"].challenger.recall == evaluate(model, data.holdout, data.eval_users, settings.eval_k, size).recall
