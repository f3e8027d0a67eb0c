"""Training: from scratch or warm-started from the champion, on the CPU or a GPU.

One switch decides where the weights come from (``init_from``: scratch | champion | checkpoint).
A checkpoint holds everything needed to resume or serve: model args, weights, optimizer state,
vocabularies, item popularity, step and the config it was trained with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
import torch

from models.two_tower import ModelArgs, TwoTower
from models.vocab import Vocabulary

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    init_from: Literal["scratch", "champion", "checkpoint"] = "scratch"
    epochs: int = 10
    learning_rate: float = 0.01
    batch_size: int = 1024
    temperature: float = 0.1
    dim: int = 32
    history_length: int = 20
    device: str = "auto"
    seed: int = 0
    compile: bool = False  # torch.compile the loss step: worth it on a GPU, not on a small CPU


@dataclass
class Recommender:
    """A trained model with the vocabularies and statistics that give its rows meaning."""

    model: TwoTower
    users: Vocabulary
    items: Vocabulary  # row 0 is padding
    categories: Vocabulary  # row 0 is "unknown"
    item_counts: pd.Series  # training interactions per item id: the popularity fallback
    config: TrainConfig
    user_counts: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))  # per user id
    steps: int = 0
    optimizer_state: dict | None = None
    history: list[dict] = field(default_factory=list)  # per-epoch loss and time

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "model_args": self.model.model_args(),
                "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "optimizer_state": self.optimizer_state,
                "users": self.users.ids,
                "items": self.items.ids,
                "categories": self.categories.ids,
                "item_counts": self.item_counts.to_dict(),
                "user_counts": self.user_counts.to_dict(),
                "config": asdict(self.config),
                "steps": self.steps,
                "history": self.history,
            },
            tmp,
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "Recommender":
        # weights_only: a checkpoint from a registry is data, never code to run.
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = TwoTower(ModelArgs(**state["model_args"]))
        model.load_state_dict(state["state_dict"])
        model.eval()
        return cls(
            model=model,
            users=Vocabulary(state["users"]),
            items=Vocabulary(state["items"], reserved=1),
            categories=Vocabulary(state["categories"], reserved=1),
            item_counts=pd.Series(state["item_counts"], dtype="int64"),
            config=TrainConfig(**state["config"]),
            user_counts=pd.Series(state.get("user_counts", {}), dtype="int64"),
            steps=state["steps"],
            optimizer_state=state["optimizer_state"],
            history=state.get("history", []),
        )


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def prepare(
    interactions: pd.DataFrame,
    catalog: pd.DataFrame,
    config: TrainConfig,
    start: Recommender | None,
    replay: pd.DataFrame | None = None,
) -> Recommender:
    """The model to train: a fresh one, or ``start`` grown to cover new users, items and categories.

    ``interactions`` are the rows new to ``start``: they extend user histories and popularity.
    ``replay`` rows (history sampled again) only extend the vocabularies. Catalog items join the
    item table even before anyone buys them, so they can be recommended.
    """
    seen = interactions if replay is None else pd.concat([interactions, replay])
    base_users = start.users if start else Vocabulary()
    base_items = start.items if start else Vocabulary(reserved=1)
    base_categories = start.categories if start else Vocabulary(reserved=1)
    users = base_users.extend(seen["user_id"])
    items = base_items.extend(pd.concat([seen["item_id"], catalog["item_id"]]))
    categories = base_categories.extend(catalog["category"] if "category" in catalog else [])

    if start is None:
        torch.manual_seed(config.seed)
        model = TwoTower(ModelArgs(len(users), len(items), len(categories), config.dim, config.history_length))
        history = torch.zeros(len(users), config.history_length, dtype=torch.long)
    else:
        model = start.model.grow(len(users), len(items), len(categories))
        history = torch.zeros(len(users), config.history_length, dtype=torch.long)
        history[: len(base_users)] = start.model.user_history
    with torch.no_grad():
        model.item_category.copy_(_item_categories(items, categories, catalog))
        model.item_log_price.copy_(_item_log_prices(items, catalog, interactions))
        model.user_history.copy_(_merge_histories(history, users, items, interactions))

    item_counts = interactions["item_id"].value_counts()
    user_counts = interactions["user_id"].value_counts()
    if start is not None:
        item_counts = item_counts.add(start.item_counts, fill_value=0)
        user_counts = user_counts.add(start.user_counts, fill_value=0)
    return Recommender(
        model, users, items, categories, item_counts.astype("int64"), config, user_counts=user_counts.astype("int64")
    )


def train(
    recommender: Recommender,
    interactions: pd.DataFrame,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> Recommender:
    """Fit on (user, item) pairs with an in-batch softmax; returns the same recommender, trained.

    The pairs live on the device for the whole run and the loss is only read once per epoch, so
    a GPU is never stalled by a host synchronisation inside the loop.
    """
    config = recommender.config
    device = pick_device(config.device)
    model = recommender.model.to(device)
    users = torch.as_tensor(recommender.users.encode(interactions["user_id"]), device=device)
    items = torch.as_tensor(recommender.items.encode(interactions["item_id"]), device=device)
    counts = torch.bincount(items, minlength=len(recommender.items)).float() + 1.0
    log_q = torch.log(counts / counts.sum())

    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    loss_of = torch.compile(model.in_batch_loss, dynamic=False) if config.compile else model.in_batch_loss
    model.train()
    for epoch in range(config.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(users), generator=generator).to(device)
        total = torch.zeros((), device=device)
        n_batches = 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:  # a softmax over one item teaches nothing
                continue
            with autocast:
                loss = loss_of(users[batch], items[batch], log_q, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            n_batches += 1
            recommender.steps += 1
        mean_loss = float(total / max(n_batches, 1))
        recommender.history.append({"epoch": epoch, "loss": mean_loss, "seconds": time.perf_counter() - started})
        logger.info("epoch %d/%d loss %.4f", epoch + 1, config.epochs, mean_loss)
        if on_epoch_end is not None:
            on_epoch_end(epoch, mean_loss)
    model.eval()
    recommender.model = model.cpu()
    recommender.optimizer_state = optimizer.state_dict()
    return recommender


def _item_categories(items: Vocabulary, categories: Vocabulary, catalog: pd.DataFrame) -> torch.Tensor:
    result = np.zeros(len(items), dtype=np.int64)
    if "category" in catalog and len(catalog):
        rows = items.encode(catalog["item_id"])
        result[rows[rows >= 0]] = categories.encode(catalog["category"], missing=0)[rows >= 0]
    return torch.as_tensor(result)


def _item_log_prices(items: Vocabulary, catalog: pd.DataFrame, interactions: pd.DataFrame) -> torch.Tensor:
    """Catalog price where there is one, else the median price paid, else the overall median."""
    paid = interactions.groupby("item_id")["price"].median()
    listed = catalog.set_index("item_id")["price"] if "price" in catalog else pd.Series(dtype="float64")
    price = listed.astype("float64").combine_first(paid.astype("float64"))
    fallback = float(price.median()) if len(price) else 1.0
    values = pd.Series(items.ids, dtype="string").map(price).astype("float64").fillna(fallback).clip(lower=0.01)
    return torch.as_tensor(np.concatenate([[0.0], np.log(values.to_numpy())]), dtype=torch.float32)


def _merge_histories(
    history: torch.Tensor, users: Vocabulary, items: Vocabulary, interactions: pd.DataFrame
) -> torch.Tensor:
    """Each user's most recent items: the rows already known, then the new interactions by time."""
    length = history.shape[1]
    frame = pd.DataFrame(
        {
            "user": users.encode(interactions["user_id"]),
            "item": items.encode(interactions["item_id"]),
            "time": interactions["event_time"].to_numpy(),
        }
    ).sort_values("time", kind="stable")
    merged = history.clone()
    for user, group in frame.groupby("user", sort=False):
        old = [i for i in merged[user].tolist() if i > 0]
        recent = (old + group["item"].tolist())[-length:]
        merged[user] = 0
        merged[user, length - len(recent) :] = torch.as_tensor(recent)
    return merged
