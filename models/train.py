"""Training: from scratch or warm-started from the champion, on the CPU or a GPU.

One switch decides where the weights come from (``init_from``: scratch | champion | checkpoint).
A checkpoint holds everything needed to resume or serve: model args, weights, optimizer state,
vocabularies, item popularity, step and the config it was trained with.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from data_checks.contract import EVENT_TYPES, basket_keys, event_types_of, of_type
from models.recommender import Recommender, TrainConfig
from models.two_tower import ModelArgs, TwoTower, sampled_softmax_loss
from models.vocab import Vocabulary

logger = logging.getLogger(__name__)


def event_weights(interactions: pd.DataFrame, weights: dict[str, float]) -> np.ndarray:
    """Each row's weight by its event type (a row without a type is a purchase)."""
    unknown = set(weights) - set(EVENT_TYPES)
    if unknown:
        raise ValueError(f"event weights name types outside the contract's {EVENT_TYPES}: {sorted(unknown)}")
    return event_types_of(interactions).map(weights).fillna(0.0).to_numpy(dtype="float64")


# Memory weights tried after training, on the held-out slice (the towers' cosine has weight 1);
# 0 keeps the towers' scores alone. See docs/finetuning.md for what Online Retail chose.
MEMORY_WEIGHTS = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0)
LOG_EVERY = 50  # steps between loss readings: each reading waits for the device
# Above this many user plus item rows, one process trains on sparse id-table gradients
# (TwoTower's sparse forward with LazyAdam): a step then costs what the batch touches, not what
# the tables hold. On the project's CPU (batch 1024, dim 32) the dense step was as fast or faster
# up to ~26k rows (20k users, 6k items) and slower from ~60k (50k users, 10k items); below the
# threshold the small catalogs of the backtests (Online Retail: ~8k rows) train exactly as before.
SPARSE_TABLE_ROWS = 50_000


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def uses_sparse_tables(args: ModelArgs, world: int) -> bool:
    """Whether training updates only the id-table rows of each step (see SPARSE_TABLE_ROWS).
    Never under data parallel training: DistributedDataParallel averages dense gradients only
    (NCCL has no sparse all-reduce)."""
    return world == 1 and args.n_users + args.n_items > SPARSE_TABLE_ROWS


class LazyAdam(torch.optim.Adam):
    """Adam, except that a parameter with a sparse gradient (an id table under TwoTower's sparse
    forward) moves only the rows of that gradient: their moments and weights take Adam's step,
    bias-corrected by the parameter's step count, and every other row stays as it is (the
    "lazy Adam" of TensorFlow Addons; torch.optim.SparseAdam places eps differently). A parameter
    with a dense gradient takes Adam's step. The state keeps Adam's layout, so a checkpoint of
    either optimizer resumes with the other. Assumes Adam's defaults for the sparse parameters
    (no weight decay, no amsgrad)."""

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.grad.is_sparse:
                    grad, param.grad = param.grad.coalesce(), None  # Adam skips a parameter without one
                    self._step_rows(param, grad.indices()[0], grad.values(), group)
        super().step()

    def _step_rows(self, param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:  # as Adam (fused) starts it
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        # Tensors, not floats: no wait for the device.
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2_sqrt = (1 - beta2 ** state["step"]).sqrt()
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        param.index_add_(0, rows, exp_avg / denom * (-group["lr"] / bias_correction1))


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None and dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per process
    return device


def prepare(
    interactions: pd.DataFrame,
    catalog: pd.DataFrame,
    config: TrainConfig,
    start: Recommender | None,
    replay: pd.DataFrame | None = None,
    title_vectors: pd.DataFrame | None = None,
) -> Recommender:
    """The model to train: a fresh one, or ``start`` grown to cover new users, items and categories.

    ``interactions`` are the rows new to ``start``: they extend user histories and popularity,
    except rows ``start`` already remembers (at or before its ``history_until``: a slice held out
    of its training but added to its histories afterwards, see ``remember``).
    ``replay`` rows (history sampled again) only extend the vocabularies. Catalog items join the
    item table even before anyone buys them, so they can be recommended. ``title_vectors``
    (indexed by item id, see ``models.text``) give items their text; an item without one keeps
    the vector it had, or none.
    """
    seen = interactions if replay is None else pd.concat([interactions, replay])
    base_users = start.users if start else Vocabulary()
    base_items = start.items if start else Vocabulary(reserved=1)
    base_categories = start.categories if start else Vocabulary(reserved=1)
    users = base_users.extend(seen["user_id"])
    items = base_items.extend(pd.concat([seen["item_id"], catalog["item_id"]]))
    categories = base_categories.extend(catalog["category"] if "category" in catalog else [])

    history = torch.zeros(len(users), config.history_length, dtype=torch.long)
    if start is None:
        torch.manual_seed(config.seed)
        model = TwoTower(
            ModelArgs(
                len(users), len(items), len(categories), config.dim, config.history_length, repeat_slots=config.repeat_slots,
                basket_decay=config.basket_decay, neighbours=config.neighbours, neighbour_share=config.neighbour_share,
                popularity_share=config.popularity_share, popularity_half_life_days=config.popularity_half_life_days,
            )
        )
    else:
        model = start.model.grow(len(users), len(items), len(categories))
        # How the memory is scored follows the config; how it was built (slots, decays) stays
        # the champion's, or its sums would mix two decays.
        model.args.neighbours, model.args.neighbour_share = config.neighbours, config.neighbour_share
        model.args.popularity_share = config.popularity_share
        history[: len(base_users)] = start.model.user_history
        model.memory_items[: len(base_users)] = start.model.memory_items
        model.memory_sums[: len(base_users)] = start.model.memory_sums
        model.memory_baskets[: len(base_users)] = start.model.memory_baskets
        model.item_recent[: len(base_items)] = start.model.item_recent
    model.args.exclude_consumed = not config.recommend_consumed  # scoring follows the config
    with torch.no_grad():
        model.item_category.copy_(_item_categories(items, categories, catalog))
        model.item_log_price.copy_(_item_log_prices(items, catalog, interactions))
        fresh = interactions
        if start is not None and start.history_until is not None:
            fresh = interactions[interactions["event_time"] > start.history_until]
        model.user_history.copy_(_merge_histories(history, users, items, fresh))
        if model.args.repeat_slots:
            baskets = _weighted_baskets(users, items, fresh, event_weights(fresh, config.event_weights))
            _fold_baskets(model, baskets)
            _fold_popularity(model, len(items), baskets, start.history_until if start else None)
        _fold_consumed(model, users, items, of_type(fresh, config.target_event))
        if title_vectors is not None and len(title_vectors):
            rows = items.encode(title_vectors.index)
            model.item_text[rows[rows >= 0]] = torch.as_tensor(title_vectors.to_numpy()[rows >= 0], dtype=torch.float32)

    item_counts = fresh["item_id"].value_counts()
    user_counts = fresh["user_id"].value_counts()
    if start is not None:
        item_counts = item_counts.add(start.item_counts, fill_value=0)
        user_counts = user_counts.add(start.user_counts, fill_value=0)
    times = [t for t in (fresh["event_time"].max() if len(fresh) else None, start.history_until if start else None) if t is not None]
    return Recommender(
        model, users, items, categories, item_counts.astype("int64"), config, user_counts=user_counts.astype("int64"),
        history_until=max(times) if times else None,
    )


def remember(recommender: Recommender, rows: pd.DataFrame, catalog: pd.DataFrame) -> Recommender:
    """The trained model with ``rows`` added to its user histories and popularity, not to its
    weights: the slice held out to evaluate it is the freshest evidence of what users want, and
    a served model should know it. Users new in ``rows`` get a row placed by their history."""
    remembered = prepare(rows, catalog, recommender.config, recommender)
    remembered.model.eval()
    remembered.training = recommender.training.record()
    return remembered


def calibrate_memory_weight(recommender: Recommender, validate: Callable[[Recommender], float], weights=MEMORY_WEIGHTS) -> dict[float, float]:
    """Set the weight of the basket memory to the one that scores best on held-out data (the
    smallest among equals); returns the score of each weight tried."""
    model = recommender.model
    scores = {}
    with torch.no_grad(), model.memoized_memory():
        for weight in weights:
            model.memory_weight.fill_(weight)
            scores[weight] = float(validate(recommender))
        best = max(scores, key=lambda w: (scores[w], -w))
        model.memory_weight.fill_(best)
    logger.info("memory weight %.2f: %s", best, ", ".join(f"{w:g}: {v:.4f}" for w, v in scores.items()))
    return scores


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = min(1.0, step / max(1, total_steps))
    return warmup * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    recommender: Recommender,
    interactions: pd.DataFrame,
    validate: Callable[[Recommender], float] | None = None,
    checkpoint_path: Path | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> Recommender:
    """Fit on (user, item) pairs with an in-batch softmax; returns the recommender, trained.

    ``validate`` scores the model after each epoch (higher is better): training stops after
    ``patience`` epochs without a better score and keeps the best weights. With
    ``checkpoint_path``, every epoch ends with a checkpoint there, and a training that finds one
    resumes after its last epoch (the shuffling of each epoch is fixed by seed and epoch, so a
    resumed run trains exactly as an uninterrupted one). Under torchrun each process takes its
    share of every batch (data parallel); rank 0 writes the checkpoints.

    The pairs live on the device for the whole run and the loss is read every LOG_EVERY steps,
    so a GPU is not stalled by a host synchronisation per step.
    """
    with recommender.model.memoized_memory():  # the held-out users' memory scores, once
        return _train(recommender, interactions, validate, checkpoint_path, on_epoch_end, progress)


def _train(recommender, interactions, validate, checkpoint_path, on_epoch_end, progress) -> Recommender:
    config = recommender.config
    rank, world = distributed_rank()
    if checkpoint_path is not None and checkpoint_path.exists():
        recommender = _resume(recommender, checkpoint_path)
    device = pick_device(config.device)
    model = recommender.model.to(device)
    users = torch.as_tensor(recommender.users.encode(interactions["user_id"]), device=device)
    items = torch.as_tensor(recommender.items.encode(interactions["item_id"]), device=device)
    if (users < 0).any() or (items < 0).any():
        raise ValueError("training rows name users or items the model was not prepared for (see prepare)")
    row_weights = event_weights(interactions, config.event_weights)
    # Every row counting 1 (purchases only) is the plain mean: no weights to multiply.
    weights = None if (row_weights == 1.0).all() else torch.as_tensor(row_weights, dtype=torch.float32, device=device)
    counts = torch.bincount(items, minlength=len(recommender.items)).float() + 1.0
    log_q = torch.log(counts / counts.sum())

    steps_per_epoch = math.ceil(len(users) / config.batch_size)
    total_steps = min(config.epochs * steps_per_epoch, config.max_steps or sys.maxsize)
    sparse = uses_sparse_tables(model.args, world)
    optimizer = LazyAdam(model.parameters(), lr=config.learning_rate, fused=True)
    if recommender.training.optimizer_state is not None and recommender.training.epochs_done:
        optimizer.load_state_dict(recommender.training.optimizer_state)
    # Buffers (histories, item side data) are the same in every process: no need to broadcast them.
    forward = torch.nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False) if world > 1 else model
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def loss_step(batch_users: torch.Tensor, batch_items: torch.Tensor, offset: int, batch_weights: torch.Tensor | None) -> torch.Tensor:
        with autocast:
            user_vec, item_vec = forward(batch_users, batch_items, sparse=sparse)
            return sampled_softmax_loss(user_vec, item_vec, batch_items, log_q, config.temperature, offset, batch_weights)

    if config.compile and sparse:
        # A compiled backward drops the id tables' sparse gradients (torch 2.13): they would not learn.
        logger.info("not compiling the loss step: the id tables train on sparse gradients")
    loss_of = torch.compile(loss_step, dynamic=False) if config.compile and not sparse else loss_step
    if validate is not None and recommender.training.best_score is None:
        recommender.training.best_score = _score(validate, recommender, model)
        recommender.training.best_state = _cpu_copy(model.state_dict())
        logger.info("before training: validation score %.4f", recommender.training.best_score)

    bar = tqdm(
        total=min(config.epochs * len(users), total_steps * config.batch_size),
        initial=min(recommender.training.epochs_done * len(users), recommender.training.steps * config.batch_size), unit="int", unit_scale=True,
        desc="training", disable=not progress or rank != 0, mininterval=1.0, dynamic_ncols=True,
    )
    while (
        recommender.training.epochs_done < config.epochs
        and recommender.training.steps < total_steps
        and (validate is None or recommender.training.epochs_done - recommender.training.best_epoch < config.patience)
    ):
        epoch, started = recommender.training.epochs_done, time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(users), generator=generator).to(device)
        total, n_batches, since_log, logged = torch.zeros((), device=device), 0, torch.zeros((), device=device), 0
        for start in range(0, len(order), config.batch_size):
            if recommender.training.steps >= total_steps:
                break
            batch = order[start : start + config.batch_size]
            bar.update(len(batch))
            batch = batch[: len(batch) - len(batch) % world]  # every process takes an equal share
            if len(batch) < 2:  # a softmax over one item teaches nothing
                continue
            share = len(batch) // world
            mine = batch[rank * share : (rank + 1) * share]
            lr = config.learning_rate * lr_factor(recommender.training.steps, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_of(users[mine], items[batch], rank * share, None if weights is None else weights[mine])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
            since_log += loss.detach()
            n_batches += 1
            logged += 1
            recommender.training.steps += 1
            if recommender.training.steps % LOG_EVERY == 0:
                point = {"step": recommender.training.steps, "loss": _global_mean(since_log, world) / logged, "lr": lr}
                recommender.training.curve.append(point)
                bar.set_postfix(loss=f"{point['loss']:.3f}", lr=f"{point['lr']:.2g}")
                since_log.zero_()
                logged = 0
        record = {
            "epoch": epoch + 1,
            "loss": _global_mean(total, world) / max(n_batches, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "steps": recommender.training.steps,
            "seconds": time.perf_counter() - started,
        }
        if validate is not None:
            record["validation"] = _score(validate, recommender, model)
            if record["validation"] > recommender.training.best_score:
                recommender.training.best_score, recommender.training.best_state = record["validation"], _cpu_copy(model.state_dict())
                recommender.training.best_epoch = epoch + 1
        recommender.training.history.append(record)
        recommender.training.epochs_done += 1
        recommender.training.optimizer_state = optimizer.state_dict()
        if checkpoint_path is not None and rank == 0:
            recommender.model = model
            recommender.save(checkpoint_path)
        logger.info("epoch %d/%d: %s", epoch + 1, config.epochs, _describe(record))
        if on_epoch_end is not None:
            on_epoch_end(record)
    bar.close()
    model.eval()
    if recommender.training.best_state is not None:
        model.load_state_dict(recommender.training.best_state)
    recommender.model = model.cpu()
    recommender.training.best_state = None  # the weights are the best ones now: no second copy to ship
    return recommender


def _score(validate: Callable[[Recommender], float], recommender: Recommender, model: TwoTower) -> float:
    model.eval()
    recommender.model = model
    with torch.no_grad():
        return float(validate(recommender))


def _global_mean(value: torch.Tensor, world: int) -> float:
    """A loss summed in this process, averaged over the processes (each holds an equal share of
    every batch, so this is the loss of the whole batches)."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _describe(record: dict) -> str:
    text = f"loss {record['loss']:.4f}, lr {record['lr']:.2g}, {record['seconds']:.1f}s"
    return text + (f", validation {record['validation']:.4f}" if "validation" in record else "")


def _resume(prepared: Recommender, checkpoint_path: Path) -> Recommender:
    """The checkpoint of an interrupted training of the same prepared model."""
    saved = Recommender.load(checkpoint_path)
    if saved.users.ids != prepared.users.ids or saved.items.ids != prepared.items.ids:
        raise ValueError(f"{checkpoint_path} belongs to another training (its vocabularies differ); remove it to start over")
    logger.info("resuming from %s after epoch %d (step %d)", checkpoint_path, saved.training.epochs_done, saved.training.steps)
    saved.config = prepared.config
    return saved


def _item_categories(items: Vocabulary, categories: Vocabulary, catalog: pd.DataFrame) -> torch.Tensor:
    result = np.zeros(len(items), dtype=np.int64)
    if "category" in catalog and len(catalog):
        rows = items.encode(catalog["item_id"])
        result[rows[rows >= 0]] = categories.encode(catalog["category"], missing=0)[rows >= 0]
    return torch.as_tensor(result)


def _item_log_prices(items: Vocabulary, catalog: pd.DataFrame, interactions: pd.DataFrame) -> torch.Tensor:
    """Catalog price where there is one, else the median price paid, else the overall median."""
    paid = interactions.groupby("item_id")["price"].median() if "price" in interactions else pd.Series(dtype="float64")
    listed = catalog.set_index("item_id")["price"] if "price" in catalog else pd.Series(dtype="float64")
    price = listed.astype("float64").combine_first(paid.astype("float64")).dropna()  # a source may have no prices
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


def _weighted_baskets(users: Vocabulary, items: Vocabulary, interactions: pd.DataFrame, weights: np.ndarray) -> pd.DataFrame:
    """One row per (user, basket, item) with an event weight above 0, weighing what its
    strongest event counts for (an item viewed and bought in one basket counts as bought)."""
    rows = pd.DataFrame(
        {
            "user": users.encode(interactions["user_id"]),
            "item": items.encode(interactions["item_id"]),
            "basket": basket_keys(interactions).to_numpy(),
            "time": interactions["event_time"].to_numpy(),
            "event": weights,
        }
    )
    rows = rows[rows["event"] > 0]
    return rows.groupby(["user", "basket", "item"], as_index=False, sort=False).agg(time=("time", "min"), event=("event", "max"))


def _fold_consumed(model: TwoTower, users: Vocabulary, items: Vocabulary, consumed: pd.DataFrame) -> None:
    """Add the (user, item) pairs of ``consumed`` to the model's consumed items, in place."""
    if consumed.empty:
        return
    old_users, old_items = model.consumed_pairs(torch.arange(model.args.n_users))
    new_users = torch.as_tensor(users.encode(consumed["user_id"]), dtype=torch.long)
    new_items = torch.as_tensor(items.encode(consumed["item_id"]), dtype=torch.long)
    model.set_consumed(torch.cat([old_users, new_users]), torch.cat([old_items, new_items]))


def _fold_baskets(model: TwoTower, rows: pd.DataFrame) -> None:
    """Fold new baskets (``_weighted_baskets``: one row per user, basket and item) into the
    basket memory, in place, exactly as if the memory had been built from all baskets at once:
    a user with n new baskets sees the old sums and basket count decayed by basket_decay ** n,
    and the k-th new basket (oldest first) added with weight basket_decay ** (n - k). Each user
    keeps the items with the largest sums (ties: the lower item row, so the memory does not
    depend on row order).

    An item counts in a basket what its strongest event counts for, and the basket what its
    strongest item does: a basket of views adds a tenth of a basket of purchases to the user's
    count."""
    if rows.empty:
        return
    decay = model.args.basket_decay
    baskets = rows.groupby(["user", "basket"], as_index=False).agg(time=("time", "min"), event=("event", "max"))
    baskets = baskets.sort_values(["user", "time", "basket"], kind="stable")
    position = baskets.groupby("user").cumcount().to_numpy()
    count = baskets.groupby("user")["basket"].transform("size").to_numpy()
    baskets["weight"] = decay ** (count - 1 - position).astype("float64")
    new = rows.merge(baskets[["user", "basket", "weight"]], on=["user", "basket"])
    new["sum"] = new["weight"] * new["event"]
    new = new.groupby(["user", "item"], as_index=False)["sum"].sum()
    baskets["added"] = baskets["weight"] * baskets["event"]
    per_user = baskets.groupby("user").agg(n=("weight", "size"), added=("added", "sum"))
    touched = torch.as_tensor(per_user.index.to_numpy())
    shrink = torch.as_tensor(decay ** per_user["n"].to_numpy().astype("float64"), dtype=torch.float32)
    old_items, old_sums = model.memory_items[touched], model.memory_sums[touched] * shrink.unsqueeze(1)
    kept = old_items > 0
    old = pd.DataFrame(
        {
            "user": touched.unsqueeze(1).expand_as(old_items)[kept].numpy(),
            "item": old_items[kept].numpy(),
            "sum": old_sums[kept].numpy().astype("float64"),
        }
    )
    merged = pd.concat([old, new]).groupby(["user", "item"], as_index=False)["sum"].sum()
    merged = merged.sort_values(["user", "sum", "item"], ascending=[True, False, True], kind="stable")
    merged["slot"] = merged.groupby("user").cumcount()
    merged = merged[merged["slot"] < model.memory_items.shape[1]]
    model.memory_baskets[touched] = model.memory_baskets[touched] * shrink + torch.as_tensor(per_user["added"].to_numpy(), dtype=torch.float32)
    model.memory_items[touched] = 0
    model.memory_sums[touched] = 0.0
    where = (torch.as_tensor(merged["user"].to_numpy()), torch.as_tensor(merged["slot"].to_numpy()))
    model.memory_items[where] = torch.as_tensor(merged["item"].to_numpy(), dtype=torch.long)
    model.memory_sums[where] = torch.as_tensor(merged["sum"].to_numpy(), dtype=torch.float32)


def _fold_popularity(model: TwoTower, n_items: int, rows: pd.DataFrame, until: pd.Timestamp | None) -> None:
    """Fold new baskets (``_weighted_baskets``) into each item's decayed purchases, in place: one
    per item and basket, weighted by its strongest event, everything decayed to the newest event
    with the half-life popularity_half_life_days."""
    if rows.empty:
        return
    times = pd.to_datetime(rows["time"], utc=True)
    newest = times.max() if until is None else max(times.max(), until)
    half_life = pd.Timedelta(days=model.args.popularity_half_life_days)
    if until is not None:
        model.item_recent *= 0.5 ** ((newest - until) / half_life)
    decayed = 0.5 ** ((newest - times) / half_life).to_numpy(dtype="float64") * rows["event"].to_numpy()
    model.item_recent += torch.as_tensor(np.bincount(rows["item"].to_numpy(), weights=decayed, minlength=n_items), dtype=torch.float32)
