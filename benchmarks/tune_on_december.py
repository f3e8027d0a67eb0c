"""Hyperparameters for Online Retail chosen on December 2011 only, never on a backtest month.

    python benchmarks/tune_on_december.py [--data ../shared/data/online_retail.csv.gz]

The backtest tests on 2011-01..2011-11. This script lands the whole file through the real
validation into a temporary home, fits each candidate on every accepted purchase before
2011-12-01 and scores it on December 2011 (1-9 December: the file ends there) with the
backtest's protocol (Recall@20 and NDCG@20 over the users seen before). It grids:

- TIFU-KNN and UP-CF@r around their published settings;
- freshrec's basket memory (decay, neighbours, their share, the share of recent popularity),
  scored on its own (the towers are trained per update and their weight is calibrated then).

Writes benchmarks/results/tuning_december_2011.json; the backtest's tuned peers
(flows/backtest_harness.py TUNED_*) and the memory's defaults (models/settings.py) are its choices.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
ROOT = Path(__file__).resolve().parents[1]

from data_checks.sources.online_retail import write_landing  # noqa: E402
from models.settings import Settings  # noqa: E402
from flows.validate_landing import validate_new_files  # noqa: E402
from models.baselines import TIFUKNN, UPCF  # noqa: E402
from models.evaluate import evaluate, relevant_sets  # noqa: E402
from models.recommender import TrainConfig  # noqa: E402
from models.train import prepare  # noqa: E402
from flows import backtest_harness as bt  # noqa: E402
from tasks.ingest import load_catalog  # noqa: E402

TUNE_MONTH = "2011-12"
TIFU_GRID = dict(neighbours=(100, 300, 900), r_b=(0.9, 1.0), r_g=(0.6, 0.7), alpha=(0.5, 0.7, 0.9), m=(3, 7))
UPCF_GRID = dict(r=(5, 10, 25), alpha=(0.5, 0.75, 0.9), q=(5, 10))
MEMORY_GRID = dict(basket_decay=(0.7, 0.8, 0.9, 0.95), neighbours=(50, 100, 300), neighbour_share=(0.5, 1.0), popularity_share=(0.0, 0.05, 0.1, 0.2))


def grid(space: dict) -> list[dict]:
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


def accepted_months(data: Path, home: Path) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every month's accepted interactions (real validation) and the accepted catalog."""
    settings = Settings(home=home, landing_settle_seconds=0)
    write_landing(data, home / "source", "month")
    # All monthly files, December 2011 included (the backtest stops at November).
    files = sorted((home / "source").glob("interactions-online-retail-*.csv"))
    catalog_file = next((home / "source").glob("catalog-*.csv"))
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    for path in [catalog_file, *files]:
        (settings.landing_dir / path.name).write_bytes(path.read_bytes())
    validate_new_files(settings)
    months = {}
    for path in files:
        label = path.stem.removeprefix("interactions-online-retail-")
        months[label] = bt.purchases(bt._accepted_rows(settings, bt.Period(label, (path,))))
    return months, load_catalog(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "online_retail.csv.gz", help="the UCI Online Retail file")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tuning_december_2011.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        months, catalog = accepted_months(args.data, Path(tmp))
    before = pd.concat([rows for label, rows in months.items() if label < TUNE_MONTH], ignore_index=True)
    target = months[TUNE_MONTH]
    relevant = relevant_sets(target, pd.Index(before["user_id"].unique()))
    cutoff = target["event_time"].min()
    print(f"history: {len(before):,} purchases before {cutoff}; {TUNE_MONTH}: {len(relevant)} users scored", flush=True)

    def peer_score(peer) -> dict:
        peer.fit(before, cutoff)
        recall, ndcg = bt.score_lists(peer.recommend(relevant.index, bt.K), relevant)
        return {"recall_at_20": float(recall.mean()), "ndcg_at_20": float(ndcg.mean())}

    results = {}
    for name, cls, space in (("TIFU-KNN", TIFUKNN, TIFU_GRID), ("UP-CF@r", UPCF, UPCF_GRID)):
        rows = []
        for params in grid(space):
            rows.append({"params": params, **peer_score(cls(**params))})
        rows.sort(key=lambda r: (-r["recall_at_20"], -r["ndcg_at_20"]))
        published = {dataset: peer_score(cls.published(dataset)) for dataset in cls.PUBLISHED if dataset != "Instacart"}
        results[name] = {"chosen": rows[0], "published": published, "grid": rows}
        print(f"{name}: chosen {rows[0]['params']} Recall@20 {rows[0]['recall_at_20']:.4f} NDCG@20 {rows[0]['ndcg_at_20']:.4f}", flush=True)

    rows = []
    for decay in MEMORY_GRID["basket_decay"]:
        model = prepare(before, catalog, TrainConfig(dim=4, basket_decay=decay), None)
        model.model.memory_weight.fill_(1e6)  # the memory decides; the untrained towers only break ties
        for params in grid({k: v for k, v in MEMORY_GRID.items() if k != "basket_decay"}):
            for key, value in params.items():
                setattr(model.model.args, key, value)
            scored = evaluate(model, target, pd.Index(before["user_id"].unique()), bt.K)
            rows.append({"params": {"basket_decay": decay, **params}, "recall_at_20": scored.recall, "ndcg_at_20": scored.ndcg})
    rows.sort(key=lambda r: (-r["recall_at_20"], -r["ndcg_at_20"]))
    results["freshrec basket memory"] = {"chosen": rows[0], "grid": rows}
    print(f"freshrec basket memory: chosen {rows[0]['params']} Recall@20 {rows[0]['recall_at_20']:.4f} NDCG@20 {rows[0]['ndcg_at_20']:.4f}")

    report = {
        "tune_month": TUNE_MONTH,
        "history_purchases": len(before),
        "users_scored": len(relevant),
        "machine": bt.machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} in {report['wall_seconds']} s")


if __name__ == "__main__":
    main()
