"""Do views and carts help predict purchases? The funnel shop's backtest with three weightings.

    python benchmarks/event_weights.py [--weeks 8] [--out benchmarks/results/event_weights_funnel.json]

The funnel shop (data_checks/sources/funnel.py: views, carts and purchases, no price, country or
order) is landed through its mapping file and replayed week by week through the real pipeline
(flows/backtest_harness.py's protocol, scored on purchases), once per weighting of freshrec's training:

- the default weights (models/settings.py: view 0.1, click 0.2, add_to_cart 0.5, purchase 1);
- purchases alone (views and carts weigh 0: they never reach training);
- every event counting 1 (views as purchases).

Each weighting runs the triggered policy and weekly retraining; the purchase-history peers are
scored once. Differences between weightings are paired per user (the same users every period)
with a bootstrap interval. Writes the JSON with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from data_checks.sources.funnel import FunnelConfig  # noqa: E402
from flows.backtest import funnel_periods  # noqa: E402
from models.settings import Settings  # noqa: E402
from flows import backtest_harness as bt  # noqa: E402

WEIGHTINGS = {
    "default weights": {},
    "purchases only": dict(view_weight=0.0, click_weight=0.0, add_to_cart_weight=0.0),
    "every event 1": dict(view_weight=1.0, click_weight=1.0, add_to_cart_weight=1.0),
}
POLICIES = ("triggered", "retrain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weeks", type=int, default=8, help="weeks of the funnel shop, the first two for the bootstrap")
    parser.add_argument("--drift-from-week", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "event_weights_funnel.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        work = Path(tmp)
        bootstrap, tests = funnel_periods(work, args.weeks, 2, args.drift_from_week, FunnelConfig(), seed=0)
        tracks: dict[str, dict[str, bt.Track]] = {}
        accepted = None
        for name, weights in WEIGHTINGS.items():
            settings = Settings(home=work / "home", **weights)
            for policy in POLICIES:
                track, rows = bt.run_policy(policy, settings, work / name.replace(" ", "-"), bootstrap, tests)
                tracks.setdefault(name, {})[policy] = track
                accepted = accepted or rows
                print(f"{name:>16} {policy:>9}: mean Recall@20 {np.mean(list(track.recall.values())):.4f}, "
                      f"{track.updates} updates, {track.train_seconds:.1f} s training", flush=True)
        peers = bt.run_peers(accepted, bootstrap, tests, include_als=False)
    results = {
        name: {policy: track.summary() for policy, track in by_policy.items()} for name, by_policy in tracks.items()
    }
    differences = {
        f"{name} minus {other}, {policy}": {
            metric: bt.paired_difference(tracks[name][policy], tracks[other][policy], metric) for metric in ("recall", "ndcg")
        }
        for policy in POLICIES
        for name, other in (("default weights", "purchases only"), ("default weights", "every event 1"))
    }
    report = {
        "what": "purchase Recall@20 and NDCG@20 of freshrec on the funnel shop, by how its training weighs event types",
        "command": "python benchmarks/event_weights.py",
        "machine": bt.machine(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "weeks": args.weeks,
        "test_weeks": [p.label for p in tests],
        "weightings": {name: Settings(**weights).event_weights() for name, weights in WEIGHTINGS.items()},
        "results": results,
        "peers": {peer.name: peer.summary() for peer in peers},
        "differences": differences,
        "protocol": bt.protocol(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for label, metrics in differences.items():
        recall = metrics["recall"]
        print(f"{label}: Recall@20 {recall['mean_difference']:+.4f} [{recall['low']:+.4f}, {recall['high']:+.4f}]")
    print(f"wrote {args.out} in {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
