"""Drift detection plus the update decision on a 500k-row batch: seconds and peak memory.

    python benchmarks/drift.py            # writes benchmarks/results/drift.json

A champion is trained on two weeks of a large synthetic shop (50k users, 8k items); then one new
week of 500k rows is measured the way the flow measures it: Evidently drift against the
champion's 20k-row reference, the champion's Recall@20 on the batch (decay), the new-row count
and the decision. No sampling: every row of the batch is used. Target: 10 s or less on the
2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from data_checks.drift import ChampionCounts, detect_drift, reference_sample  # noqa: E402
from data_checks.sources.synthetic import ShopConfig, SyntheticShop  # noqa: E402
from models.settings import Settings  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.recommender import TrainConfig  # noqa: E402
from models.train import prepare, train  # noqa: E402
from tasks.gates import UpdateSignals, decide_update  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drift.json")
    args = parser.parse_args()

    settings = Settings()
    # Baskets average under five lines: enough orders for a week of a little more than `rows`.
    shop = SyntheticShop(0, ShopConfig(n_users=50_000, n_items=8_000, orders_per_week=args.rows // 4))
    # Random whole orders, not the first rows: a week's file is sorted by time, and its head
    # would be Monday only.
    history = pd.concat([reference_sample(shop.week(w), 100_000, seed=w) for w in (0, 1)], ignore_index=True)
    champion = train(prepare(history, shop.catalog(False), TrainConfig(epochs=1, batch_size=4096), None), history)
    reference = reference_sample(history, settings.reference_sample_rows, seed=0)
    counts = ChampionCounts(champion.item_counts, champion.user_counts, shop.catalog(True).set_index("item_id")["category"])
    batch = reference_sample(shop.week(2), args.rows, seed=2)
    print(f"champion trained on {len(history):,} rows; batch of {len(batch):,} rows", flush=True)

    started = time.perf_counter()
    drift = detect_drift(batch, reference, counts, None)
    drift_seconds = time.perf_counter() - started
    decay = evaluate(champion, batch, pd.Index(champion.users.ids), settings.eval_k)
    decision = decide_update.fn(UpdateSignals(drift.drift_share, 0.0, len(batch), 7.0), settings)
    seconds = time.perf_counter() - started

    report = {
        "rows": len(batch),
        "seconds": round(seconds, 3),
        "drift_seconds": round(drift_seconds, 3),
        "decay_seconds": round(seconds - drift_seconds, 3),
        "rows_per_second": round(len(batch) / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "drift_share": round(drift.drift_share, 4),
        "users_scored_for_decay": decay.users,
        "update": decision.update,
        "sampling": "none: the whole batch is used",
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}, {len(os.sched_getaffinity(0))} cores",
        "target": "500k rows in 10 s or less",
        "note": "peak_rss_mb includes generating the shop and training the champion in this process",
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
