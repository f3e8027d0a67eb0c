"""The threshold study behind the default drift settings (docs/drift-thresholds.md).

    python benchmarks/drift_thresholds.py --seeds 20
    python benchmarks/drift_thresholds.py --seeds 20 --online-retail ../shared/data/online_retail.csv.gz

Synthetic part: for each seed, a champion's view of two weeks (reference sample and counts) and
four kinds of new week: same distribution, new items, a popularity shift, a price shift. It
prints how often each kind crosses `drift_share_threshold`, and which columns drifted.
Online Retail part: the real pipeline (bootstrap on December 2010, then one continuous-training
run over 2011) in a temporary home, printing every month's signals and decision.
Writes benchmarks/results/drift_thresholds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

from data_checks.drift import ChampionCounts, detect_drift, reference_sample  # noqa: E402
from data_checks.sources.synthetic import BatchOptions, SyntheticShop  # noqa: E402
from models.settings import Settings  # noqa: E402

KINDS = {
    "same distribution": BatchOptions(),
    "new items": BatchOptions(new_items=True),
    "popularity shift": BatchOptions(popularity_shift=True),
    "price shift": BatchOptions(price_shift=True),
}


def synthetic_study(seeds: int, threshold: float) -> dict:
    results = {kind: {"triggered": 0, "drift_shares": [], "columns": Counter()} for kind in KINDS}
    for seed in range(seeds):
        shop = SyntheticShop(seed)
        history = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
        counts = ChampionCounts(
            history["item_id"].value_counts(), history["user_id"].value_counts(),
            shop.catalog(include_new_items=True).set_index("item_id")["category"],
        )
        reference = reference_sample(history, 20_000, seed=0)
        for kind, options in KINDS.items():
            drift = detect_drift(shop.week(2 + seed % 6, options), reference, counts, None)
            entry = results[kind]
            entry["triggered"] += drift.drift_share >= threshold
            entry["drift_shares"].append(round(drift.drift_share, 3))
            entry["columns"].update(drift.drifted_columns)
        print(f"seed {seed}: " + ", ".join(f"{k} {results[k]['drift_shares'][-1]:.2f}" for k in KINDS), flush=True)
    return {
        kind: {
            "seeds": seeds,
            "triggered": entry["triggered"],
            "rate": entry["triggered"] / seeds,
            "mean_drift_share": round(sum(entry["drift_shares"]) / seeds, 3),
            "drifted_columns": dict(entry["columns"].most_common()),
        }
        for kind, entry in results.items()
    }


def online_retail_study(source: Path) -> list[dict]:
    """Run the real flows in a temporary home and return each month's outcome with its signals."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FRESHREC_HOME"] = tmp
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from data_checks.sources.online_retail import write_landing
        from flows.bootstrap import bootstrap
        from flows.continuous_training import continuous_training

        settings = Settings()
        write_landing(source, settings.landing_dir, "month")
        bootstrap(settings, pd.Timestamp("2011-01-01", tz="UTC").to_pydatetime())
        outcomes = continuous_training(settings, return_state=True).result()
    months = []
    for outcome in sorted(outcomes, key=lambda o: o.batch_id or 0):
        signals = {s.name: round(s.value, 4) for s in outcome.signals}
        months.append({
            "batch": outcome.batch, "update": outcome.update, "promoted": outcome.promoted, **signals,
            "drifted_columns": outcome.drifted_columns, "reasons": outcome.reasons,
        })
    return months


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--online-retail", type=Path, default=None, help="online_retail.csv.gz, to add the real-data part")
    parser.add_argument("--skip-synthetic", action="store_true", help="keep the synthetic part of an earlier result")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drift_thresholds.json")
    args = parser.parse_args()

    settings = Settings()
    earlier = json.loads(args.out.read_text()) if args.skip_synthetic and args.out.exists() else {}
    report = {
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}, {len(os.sched_getaffinity(0))} cores",
        "drift_share_threshold": settings.drift_share_threshold,
        "synthetic": earlier["synthetic"] if earlier else synthetic_study(args.seeds, settings.drift_share_threshold),
    }
    for kind, entry in report["synthetic"].items():
        print(f"{kind:18s} triggered {entry['triggered']:2d}/{entry['seeds']} ({entry['rate']:.0%}); columns {entry['drifted_columns']}")
    if args.online_retail:
        report["online_retail"] = online_retail_study(args.online_retail)
        for month in report["online_retail"]:
            print(json.dumps(month))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
