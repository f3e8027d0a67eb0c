"""How to fine-tune: warm-start settings against retraining from scratch, month by month, on UCI Online Retail.

    python benchmarks/finetune_study.py ../shared/data/online_retail.csv.gz --out benchmarks/results/finetune_study.json

Protocol (the backtest's): interactions are the distinct (customer, stock code, invoice)
purchases that pass the data contract. The first model is trained from scratch on December 2010.
For each test month m (2011-01 to 2011-11), a model knows only data before m and is scored on m:
the relevant set of a user is the distinct items they bought in m, for users seen before m;
Recall@20 = |top20 ∩ R| / min(20, |R|), averaged over users, then over months.

- `scratch`: retrained from scratch every month on all data before m (the quality reference).
- each warm variant: a chain of fine-tunes run as the product runs them (see run_warm), each
  starting from the variant's own model of the month before.

Prints each variant's mean Recall@20, its share of scratch's, and its total training seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]

from data_checks.interactions import validate_interactions  # noqa: E402
from data_checks.sources.online_retail import catalog, read_source, to_contract  # noqa: E402
from models.settings import Settings  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.text import catalog_title_vectors  # noqa: E402
from models.recommender import Recommender, TrainConfig  # noqa: E402
from models.train import prepare, remember, train  # noqa: E402
from tasks.ingest import contract_limits  # noqa: E402
from tasks.training import holdout_split, replay_sample  # noqa: E402

MONTHS = [f"2011-{m:02d}" for m in range(1, 12)]


def load(source: Path, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Accepted, distinct purchases of the whole file and its catalog (cached between runs)."""
    accepted_path, catalog_path = cache_dir / "accepted.parquet", cache_dir / "catalog.parquet"
    if accepted_path.exists() and catalog_path.exists():
        return pd.read_parquet(accepted_path), pd.read_parquet(catalog_path)
    raw = read_source(source)
    contract = to_contract(raw)
    month = pd.to_datetime(contract["event_time"], utc=True, errors="coerce").dt.strftime("%Y-%m")
    limits = contract_limits(Settings())
    parts = [validate_interactions(rows.reset_index(drop=True), 0.2, limits).accepted for _, rows in contract.groupby(month)]
    accepted = pd.concat(parts, ignore_index=True).drop_duplicates(["user_id", "item_id", "order_id"])
    accepted = accepted.sort_values("event_time", kind="stable", ignore_index=True)
    items = catalog(raw)
    cache_dir.mkdir(parents=True, exist_ok=True)
    accepted.to_parquet(accepted_path, index=False)
    items.to_parquet(catalog_path, index=False)
    return accepted, items


def month_of(frame: pd.DataFrame) -> pd.Series:
    return frame["event_time"].dt.tz_convert("Europe/London").dt.strftime("%Y-%m")


def score(model: Recommender, data: pd.DataFrame, months: pd.Series, month: str) -> float:
    before = data[months < month]
    return evaluate(model, data[months == month], pd.Index(before["user_id"].unique()), 20).recall


def run_scratch(data, months, items, vectors, config, test_months) -> dict:
    recalls, seconds = [], 0.0
    for month in test_months:
        before = data[months < month]
        started = time.perf_counter()
        model = train(prepare(before, items, config, None, title_vectors=vectors), before, progress=False)
        seconds += time.perf_counter() - started
        recalls.append(score(model, data, months, month))
        print(f"  scratch {month}: recall {recalls[-1]:.4f} ({time.perf_counter() - started:.1f}s)", flush=True)
    return {"recalls": recalls, "train_seconds": seconds}


def run_warm(
    data, months, items, vectors, bootstrap: Recommender, config, replay_ratio, half_life, early_stopping, test_months, remember_holdout=False
) -> dict:
    """A chain of fine-tunes as the product runs them: each takes the rows after the model's
    watermark (last month, plus the slice held out last time), holds the newest 20% out, trains
    on the rest plus a replay sample of older rows, and, with ``early_stopping``, keeps the
    epoch that scored best on the held-out slice."""
    model, recalls, seconds = bootstrap, [], 0.0
    watermark = data.loc[months < "2011-01", "event_time"].max()
    for month in test_months:
        new = data[(data["event_time"] > watermark) & (months < month)]
        if len(new) >= 1000:
            history = data[data["event_time"] <= watermark]
            train_part, holdout = holdout_split(new, 0.2)
            replay = replay_sample(history, int(len(train_part) * replay_ratio), half_life, train_part["event_time"].min(), 0)
            known = pd.Index(pd.concat([history["user_id"], train_part["user_id"]]).unique())
            validate = (lambda r: evaluate(r, holdout, known, 20).recall) if early_stopping else None
            started = time.perf_counter()
            prepared = prepare(train_part, items, config, model, replay=replay, title_vectors=vectors)
            model = train(prepared, pd.concat([train_part, replay]), validate=validate, progress=False)
            if remember_holdout:
                model = remember(model, holdout, items)
            seconds += time.perf_counter() - started
            watermark = train_part["event_time"].max()
        recalls.append(score(model, data, months, month))
        print(f"  {month}: recall {recalls[-1]:.4f}, {len(model.training.history)} epochs, {seconds:.1f}s so far", flush=True)
    return {"recalls": recalls, "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/freshrec-finetune-study"))
    parser.add_argument("--months", nargs="*", default=MONTHS)
    parser.add_argument("--variants", nargs="*", default=None, help="names of the variants to run (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    data, items = load(args.source, args.cache_dir)
    vectors = catalog_title_vectors(items, args.cache_dir / "text")
    months = month_of(data)
    print(f"{len(data):,} distinct purchases, {data['user_id'].nunique():,} users, {len(items):,} items", flush=True)

    settings = Settings()
    scratch_config = TrainConfig(
        epochs=settings.scratch_epochs, learning_rate=settings.scratch_learning_rate, batch_size=settings.batch_size,
        dim=settings.embedding_dim, history_length=settings.history_length, temperature=settings.temperature,
    )
    december = data[months < "2011-01"]
    bootstrap = train(prepare(december, items, scratch_config, None, title_vectors=vectors), december, progress=False)
    warm = replace(scratch_config, init_from="champion")
    variants = {
        # The naive warm start: two passes over the month plus an equal replay sample,
        # half the learning rate, a fresh optimizer.
        "naive": dict(config=replace(warm, epochs=2, learning_rate=0.005), replay_ratio=1.0, half_life=None, early_stopping=False),
        "replay3": dict(config=replace(warm, epochs=2, learning_rate=0.005), replay_ratio=3.0, half_life=None, early_stopping=False),
        "replay3-lr01": dict(config=replace(warm, epochs=2, learning_rate=0.01), replay_ratio=3.0, half_life=None, early_stopping=False),
        "replay3-lr01-e4": dict(config=replace(warm, epochs=4, learning_rate=0.01), replay_ratio=3.0, half_life=None, early_stopping=False),
        "replay3-lr01-warmup-cosine": dict(
            config=replace(warm, epochs=4, learning_rate=0.01, warmup_steps=50, min_lr_ratio=0.1), replay_ratio=3.0, half_life=None, early_stopping=False
        ),
        "replay3-recent90-lr01-e4": dict(config=replace(warm, epochs=4, learning_rate=0.01), replay_ratio=3.0, half_life=90.0, early_stopping=False),
        "replay3-lr01-early-stop": dict(
            config=replace(warm, epochs=6, learning_rate=0.01, patience=1), replay_ratio=3.0, half_life=None, early_stopping=True
        ),
        "replay3-recent30-lr01-e4": dict(config=replace(warm, epochs=4, learning_rate=0.01), replay_ratio=3.0, half_life=30.0, early_stopping=False),
        "replay6-recent90-lr01-e4": dict(config=replace(warm, epochs=4, learning_rate=0.01), replay_ratio=6.0, half_life=90.0, early_stopping=False),
        "replay3-recent90-lr02-e4": dict(config=replace(warm, epochs=4, learning_rate=0.02), replay_ratio=3.0, half_life=90.0, early_stopping=False),
        "replay3-recent30-lr01-e4-keep-best": dict(
            config=replace(warm, epochs=4, learning_rate=0.01, patience=4), replay_ratio=3.0, half_life=30.0, early_stopping=True,
            remember_holdout=True,
        ),
        "replay3-lr01-e4-remember": dict(
            config=replace(warm, epochs=4, learning_rate=0.01), replay_ratio=3.0, half_life=None, early_stopping=False, remember_holdout=True
        ),
        "replay3-lr01-early-stop-remember": dict(
            config=replace(warm, epochs=6, learning_rate=0.01, patience=1), replay_ratio=3.0, half_life=None, early_stopping=True,
            remember_holdout=True,
        ),
    }
    chosen = args.variants or ["scratch", *variants]
    results = {}
    if "scratch" in chosen:
        print("scratch", flush=True)
        results["scratch"] = run_scratch(data, months, items, vectors, scratch_config, args.months)
    for name, variant in variants.items():
        if name in chosen:
            print(name, flush=True)
            results[name] = run_warm(data, months, items, vectors, bootstrap, test_months=args.months, **variant)
            results[name]["settings"] = {k: (v.__dict__ if k == "config" else v) for k, v in variant.items()}

    reference = np.mean(results["scratch"]["recalls"]) if "scratch" in results else None
    for name, result in results.items():
        result["mean_recall_at_20"] = float(np.mean(result["recalls"]))
        if reference:
            result["share_of_scratch"] = result["mean_recall_at_20"] / reference
        print(f"{name:32s} mean Recall@20 {result['mean_recall_at_20']:.4f}"
              + (f" ({result['share_of_scratch']:.0%} of scratch)" if reference else "")
              + f", {result['train_seconds']:.0f}s training")
    if args.out:
        report = {
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
            "months": args.months,
            "results": results,
        }
        earlier = json.loads(args.out.read_text())["results"] if args.out.exists() else {}
        report["results"] = {**earlier, **results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
