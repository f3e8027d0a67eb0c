"""Training throughput and quality of the two-tower model on the synthetic shop, CPU or GPU.

    python benchmarks/training.py --device cpu --batch-size 512 --out benchmarks/results/training_cpu.json
    python benchmarks/training.py --device cuda --batch-size 16384 --compile --out benchmarks/results/training_gpu.json

Trains from scratch on `--weeks` weeks of a larger synthetic shop, then fine-tunes on the next
(drifted) week from that model, and prints seconds per epoch, interactions per second and
Recall@20 on the week after. The item tower uses MiniLM title vectors (encoded before the clock
starts); `--no-text` leaves them out, so only numpy, pandas and torch are needed on a bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_checks.sources.synthetic import BatchOptions, ShopConfig, SyntheticShop  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.train import TrainConfig, pick_device, prepare, train  # noqa: E402


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


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
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = pick_device(args.device)
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
    scratch_seconds = [h["seconds"] for h in scratch.history]
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
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
        "peak_memory_is": "GPU memory allocated by torch" if device.type == "cuda" else "resident memory of the process",
        "final_loss": round(scratch.history[-1]["loss"], 4),
        "recall_at_20_next_week_scratch": round(scratch_recall, 4),
        "finetune_seconds": round(sum(h["seconds"] for h in tuned.history), 3),
        "recall_at_20_after_drift_champion": round(evaluate(scratch, after, users_after, 20).recall, 4),
        "recall_at_20_after_drift_finetuned": round(evaluate(tuned, after, users_after, 20).recall, 4),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
