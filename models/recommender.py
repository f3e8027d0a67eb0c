"""The served model: a two-tower model with its vocabularies, statistics and config, the file
it is saved in, and how it was trained (kept apart, in ``TrainingState``).

A saved model holds everything needed to serve it and, while a training runs, to resume it:
model args, weights, vocabularies, item and user counts, the config, and the training state
(optimizer state, step, per-epoch history). Serving reads this module and ``models.two_tower``
only; the training loop is ``models.train``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import torch

from data_checks.contract import DEFAULT_EVENT_TYPE
from models.files import temporary_beside
from models.two_tower import ModelArgs, TwoTower
from models.vocab import Vocabulary

logger = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    init_from: Literal["scratch", "champion", "checkpoint"] = "scratch"
    epochs: int = 10  # at most this many passes over the data
    max_steps: int | None = None  # and at most this many optimizer steps (None: the epochs decide)
    learning_rate: float = 0.01
    warmup_steps: int = 0  # linear warm-up: a fresh Adam takes its largest steps first
    min_lr_ratio: float = 1.0  # cosine decay to learning_rate * this by the last step (1.0: constant)
    patience: int = 2  # early stopping: epochs without a better validation score before stopping
    batch_size: int = 1024
    temperature: float = 0.1
    dim: int = 32
    history_length: int = 20
    device: str = "auto"
    seed: int = 0
    compile: bool = False  # torch.compile the loss step: worth it on a GPU, not on a small CPU
    repeat_slots: int = 100  # items per user in the basket memory (models.two_tower)
    basket_decay: float = 0.8  # the basket memory's decay per newer basket
    neighbours: int = 100  # users whose memories lend a user theirs at scoring time
    neighbour_share: float = 1.0
    popularity_share: float = 0.1
    popularity_half_life_days: float = 30.0
    # What each event type counts for in the loss, the basket memory and the popularity (a
    # purchase counts 1); a type missing here counts 0.
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    target_event: str = DEFAULT_EVENT_TYPE  # the event the model is scored on; "consumed" means had it
    recommend_consumed: bool = True  # False: an item the user consumed is never recommended to them


DEFAULT_EVENT_WEIGHTS = {"view": 0.1, "click": 0.2, "add_to_cart": 0.5, "purchase": 1.0}


@dataclass
class TrainingState:
    """How a model was trained, per training: what a resumed training needs and what its MLflow
    run plots. A served model carries only the record (the optimizer state and best weights are
    dropped when training ends)."""

    steps: int = 0  # optimizer steps of this training
    optimizer_state: dict | None = None
    history: list[dict] = field(default_factory=list)  # per epoch: loss, validation score, lr, time
    curve: list[dict] = field(default_factory=list)  # every LOG_EVERY steps: step, loss, lr
    epochs_done: int = 0  # epochs of this training completed (a resumed training starts after them)
    best_score: float | None = None  # best validation score so far (early stopping)
    best_state: dict | None = None  # the weights that scored it, while training runs
    best_epoch: int = 0  # the epoch after which they scored it (0: before training)

    def record(self) -> "TrainingState":
        """This training's record without what only a running training needs."""
        return TrainingState(self.steps, None, self.history, self.curve, self.epochs_done, self.best_score, None, self.best_epoch)


@dataclass
class Recommender:
    """The served model: the towers' weights and the basket memory (``model``), the
    vocabularies and statistics that give their rows meaning, and the config that says how it
    scores. ``training`` records how it was trained (and, mid-training, what a resumed training
    needs); scoring never reads it."""

    model: TwoTower
    users: Vocabulary
    items: Vocabulary  # row 0 is padding
    categories: Vocabulary  # row 0 is "unknown"
    item_counts: pd.Series  # training interactions per item id: the popularity fallback
    config: TrainConfig
    user_counts: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))  # per user id
    history_until: pd.Timestamp | None = None  # newest event in the user histories and counts
    training: TrainingState = field(default_factory=lambda: TrainingState())  # how it was trained; not served

    def save(self, path: Path) -> Path:
        """Write atomically: a crash mid-write leaves the previous file, never half of one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(path)
        torch.save(
            {
                "model_args": self.model.model_args(),
                "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "optimizer_state": self.training.optimizer_state,
                "users": self.users.ids,
                "items": self.items.ids,
                "categories": self.categories.ids,
                "item_counts": self.item_counts.to_dict(),
                "user_counts": self.user_counts.to_dict(),
                "config": asdict(self.config),
                "steps": self.training.steps,
                "history": self.training.history,
                "curve": self.training.curve,
                "epochs_done": self.training.epochs_done,
                "best_score": self.training.best_score,
                "best_state": self.training.best_state,
                "best_epoch": self.training.best_epoch,
                "history_until": None if self.history_until is None else self.history_until.isoformat(),
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
        missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
        unexpected = [key for key in unexpected if key not in LEGACY_REPEAT_KEYS]
        if unexpected or set(missing) - TEXT_KEYS - MEMORY_KEYS - CONSUMED_KEYS:
            raise RuntimeError(f"{path} does not fit the model: missing {missing}, unexpected {unexpected}")
        if set(missing) & MEMORY_KEYS:
            logger.warning("%s was written before the basket memory: its memory starts empty (the towers score alone) and fills with the baskets of its next updates", path)
        if set(missing) & TEXT_KEYS:  # written before the text tower existed: leave titles out of its scores
            with torch.no_grad():
                model.text_projection.weight.zero_()
        # Written before the basket memory (or with the purchase counts it replaced): the memory
        # stays empty with weight 0, and the next update folds in only the baskets it gets.
        model.eval()
        return cls(
            model=model,
            users=Vocabulary(state["users"]),
            items=Vocabulary(state["items"], reserved=1),
            categories=Vocabulary(state["categories"], reserved=1),
            item_counts=pd.Series(state["item_counts"], dtype="int64"),
            config=TrainConfig(**state["config"]),
            user_counts=pd.Series(state.get("user_counts", {}), dtype="int64"),
            history_until=pd.Timestamp(state["history_until"]) if state.get("history_until") else None,
            training=TrainingState(
                steps=state["steps"],
                optimizer_state=state["optimizer_state"],
                history=state.get("history", []),
                curve=state.get("curve", []),
                epochs_done=state.get("epochs_done", 0),
                best_score=state.get("best_score"),
                best_state=state.get("best_state"),
                best_epoch=state.get("best_epoch", 0),
            ),
        )



TEXT_KEYS = {"text_projection.weight", "item_text"}
CONSUMED_KEYS = {"consumed_indptr", "consumed_items"}  # older models kept no consumed items
MEMORY_KEYS = {"memory_items", "memory_sums", "memory_baskets", "item_recent", "memory_weight"}
LEGACY_REPEAT_KEYS = {"user_top_items", "user_top_counts", "repeat_weight"}  # the purchase counts of older models
