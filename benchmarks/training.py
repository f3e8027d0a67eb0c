"""Training throughput and quality of the two-tower model on the synthetic shop, CPU or GPU.

    python benchmarks/training.py --device cpu --batch-size 512 --out benchmarks/results/training_cpu.json
    python benchmarks/training.py --device cuda --batch-size 16384 --compile --out benchmarks/results/training_gpu.json
    python benchmarks/training.py --device cpu --sized --users 100000 --items 100000 --batch-size 1024 \
        --rows 300000 --epochs 3 --out benchmarks/results/training_cpu_100k_items.json
    python benchmarks/training.py --device cpu --sized --users 2000000 --items 500000 --batch-size 1024 \
        --rows 300000 --epochs 2 --out benchmarks/results/training_cpu_500k_items.json

Trains from scratch on `--weeks` weeks of a larger synthetic shop, then fine-tunes on the next
(drifted) week from that model, and prints seconds per epoch, interactions per second and
Recall@20 on the week after. The item tower uses MiniLM title vectors (encoded before the clock
starts); `--no-text` leaves them out, so only numpy, pandas and torch are needed on a bare GPU box.

`--sized` times training alone at a catalog and user base of any size: `--rows` interactions an
epoch (a bounded number of steps, whatever the number of users), drawn with numpy in seconds (see
``sized_shop``); no fine-tune and no recall. It prints interactions per second of the steady
epochs (all but the first), the process's peak memory and whether the id tables trained sparse.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


from data_checks.sources.synthetic import BatchOptions, ShopConfig, SyntheticShop  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.recommender import Recommender, TrainConfig  # noqa: E402
from models.train import pick_device, prepare, train, uses_sparse_tables  # noqa: E402
from models.two_tower import ModelArgs, TwoTower  # noqa: E402
from models.vocab import Vocabulary  # noqa: E402

ZIPF_EXPONENT = 1.0  # the k-th most popular item is bought in proportion to 1 / k ** this
SIZED_CATEGORIES = 200


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def sized_shop(n_users: int, n_items: int, n_rows: int, config: TrainConfig, seed: int = 0) -> tuple[Recommender, pd.DataFrame]:
    """A prepared model of ``n_users`` users and ``n_items`` items (row 0 of them padding) and
    ``n_rows`` (user_id, item_id) rows to train it on: users drawn uniformly, items by Zipf-like
    popularity, every user's history full, random title vectors, categories and prices.

    Built directly rather than by ``models.train.prepare``: its per-user history merge and basket
    memory would take far longer than the training at millions of users, and training reads
    neither the memory nor anything else ``prepare`` adds."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, n_items) ** ZIPF_EXPONENT)
    cdf /= cdf[-1]

    def draw_items(size) -> np.ndarray:  # item rows 1 .. n_items - 1 by popularity
        return 1 + np.minimum(np.searchsorted(cdf, rng.random(size)), n_items - 2)

    torch.manual_seed(config.seed)
    model = TwoTower(ModelArgs(n_users, n_items, SIZED_CATEGORIES + 1, config.dim, config.history_length, repeat_slots=0, neighbours=0))
    with torch.no_grad():
        model.user_history.copy_(torch.as_tensor(draw_items((n_users, config.history_length))))
        model.item_category.copy_(torch.as_tensor(rng.integers(1, SIZED_CATEGORIES + 1, n_items)))
        model.item_log_price.copy_(torch.as_tensor(rng.normal(1.0, 1.0, n_items), dtype=torch.float32))
        text = torch.as_tensor(rng.standard_normal((n_items, model.args.text_dim), dtype=np.float32))
        model.item_text.copy_(torch.nn.functional.normalize(text, dim=-1))  # title vectors are unit length
    users = Vocabulary([f"u{i}" for i in range(n_users)])
    items = Vocabulary([f"i{i}" for i in range(1, n_items)], reserved=1)
    categories = Vocabulary([f"c{i}" for i in range(1, SIZED_CATEGORIES + 1)], reserved=1)
    rows = pd.DataFrame({
        "user_id": np.asarray(users.ids, dtype=object)[rng.integers(0, n_users, n_rows)],
        "item_id": np.asarray(items.ids, dtype=object)[draw_items(n_rows) - 1],
    })
    recommender = Recommender(model, users, items, categories, rows["item_id"].value_counts(), config)
    return recommender, rows


def sized(args: argparse.Namespace, device: torch.device) -> dict:
    """Training throughput alone on ``sized_shop``: see the module's docstring."""
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=str(device), learning_rate=0.01, compile=args.compile)
    started = time.perf_counter()
    recommender, rows = sized_shop(args.users, args.items, args.rows, config)
    print(f"generated {args.users:,} users, {args.items:,} items, {len(rows):,} rows in {time.perf_counter() - started:.1f}s", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trained = train(recommender, rows, progress=False)
    seconds = [h["seconds"] for h in trained.training.history]
    steady = sum(seconds[1:]) / max(1, len(seconds) - 1)
    return {
        "machine": machine(device),
        "device": device.type,
        "users": args.users,
        "items": args.items,
        "rows_per_epoch": len(rows),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "embedding_dim": config.dim,
        "history_length": config.history_length,
        "dtype": "bf16 autocast" if device.type == "cuda" else "float32",
        "compiled": args.compile and not uses_sparse_tables(trained.model.args, world=1),
        "sparse_tables": uses_sparse_tables(trained.model.args, world=1),
        "first_epoch_seconds": round(seconds[0], 3),
        "steady_epoch_seconds": round(steady, 3),
        "interactions_per_second": round(len(rows) / steady),
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_is": peak_memory_is(device),
        "loss_by_epoch": [round(h["loss"], 4) for h in trained.training.history],
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_memory_is(device: torch.device) -> str:
    return "GPU memory allocated by torch" if device.type == "cuda" else "resident memory of the process"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weeks", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--orders-per-week", type=int, default=12_000)
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss step")
    parser.add_argument("--no-text", action="store_true", help="leave title vectors out of the item tower")
    parser.add_argument("--sized", action="store_true", help="time training alone on a numpy-drawn shop of --users x --items")
    parser.add_argument("--rows", type=int, default=500_000, help="with --sized: interactions an epoch")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = pick_device(args.device)
    if args.sized:
        write(sized(args, device), args.out)
        return
    shop = SyntheticShop(0, ShopConfig(n_users=args.users, n_items=args.items, n_new_items=args.items // 5, orders_per_week=args.orders_per_week))
    started = time.perf_counter()
    history = pd.concat([shop.week(w) for w in range(args.weeks)], ignore_index=True)
    drifted = shop.week(args.weeks, BatchOptions.full_drift())
    after = shop.week(args.weeks + 1, BatchOptions.full_drift())
    print(f"generated {len(history):,} + {len(drifted):,} + {len(after):,} rows in {time.perf_counter() - started:.1f}s", flush=True)

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=str(device), learning_rate=0.01, compile=args.compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    vectors = None
    if not args.no_text:
        from models.text import catalog_title_vectors

        vectors = catalog_title_vectors(shop.catalog(True), None)
    scratch = train(prepare(history, shop.catalog(False), config, None, title_vectors=vectors), history)
    scratch_seconds = [h["seconds"] for h in scratch.training.history]
    users = pd.Index(history["user_id"].unique())
    scratch_recall = evaluate(scratch, drifted, users, 20).recall

    finetune_config = TrainConfig(**{**config.__dict__, "init_from": "champion", "epochs": 2, "learning_rate": 0.005})
    replay = history.sample(n=len(drifted), random_state=0)
    tuned = prepare(drifted, shop.catalog(True), finetune_config, scratch, replay=replay, title_vectors=vectors)
    tuned = train(tuned, pd.concat([drifted, replay]))
    users_after = pd.Index(pd.concat([history, drifted])["user_id"].unique())
    result = {
        "machine": machine(device),
        "device": device.type,
        "rows_scratch": len(history),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "dtype": "bf16 autocast" if device.type == "cuda" else "float32",
        "compiled": args.compile,
        "title_text": not args.no_text,
        # The first epoch pays for start-up (CUDA context, kernels): report the steady state apart.
        "first_epoch_seconds": round(scratch_seconds[0], 3),
        "steady_epoch_seconds": round(sum(scratch_seconds[1:]) / max(1, len(scratch_seconds) - 1), 3),
        "interactions_per_second": round(len(history) / (sum(scratch_seconds[1:]) / max(1, len(scratch_seconds) - 1))),
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_is": peak_memory_is(device),
        "final_loss": round(scratch.training.history[-1]["loss"], 4),
        "recall_at_20_next_week_scratch": round(scratch_recall, 4),
        "finetune_seconds": round(sum(h["seconds"] for h in tuned.training.history), 3),
        "recall_at_20_after_drift_champion": round(evaluate(scratch, after, users_after, 20).recall, 4),
        "recall_at_20_after_drift_finetuned": round(evaluate(tuned, after, users_after, 20).recall, 4),
    }
    write(result, args.out)


def write(result: dict, out: Path | None) -> None:
    print(json.dumps(result, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
