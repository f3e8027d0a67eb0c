"""Validate and split a 500k-row interaction batch: rows per second and peak memory.

    python benchmarks/validation.py            # writes benchmarks/results/validation.json
    python benchmarks/validation.py --partitions 4 --out benchmarks/results/validation_dask4.json

The batch (a synthetic week with 3% bad rows, as CSV) is written by a child process, so the
peak resident memory reported is the validation's own: read, coerce, the GE suite, the row
masks, the look-up of rows accepted before (an empty ledger here: the cost of looking up every
row and remembering the accepted ones), and writing accepted/ and quarantine/ Parquet files. Target: 500k rows in 5 s or less
on the 2-core development machine.

With ``--partitions N`` the row checks run as N partitions on a local Dask cluster of N worker
processes (what `validation_partitions` does under the flow's Dask task runner, here without
Prefect's task bookkeeping); the cluster is started before the clock starts, and the peak
memory is the flow process's (the workers hold one partition each).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_batch(path: Path, rows: int) -> None:
    from data_checks.sources.synthetic import BatchOptions, ShopConfig, SyntheticShop

    # Baskets average under five lines: ask for enough orders, then cut to exactly `rows`.
    shop = SyntheticShop(0, ShopConfig(n_users=50_000, n_items=8_000, orders_per_week=rows // 4))
    frame = shop.week(0, BatchOptions(bad_row_share=0.03)).head(rows)
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "validation.json")
    parser.add_argument("--partitions", type=int, default=1, help="check the rows in N partitions on a local Dask cluster")
    parser.add_argument("--write-batch", type=Path, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.write_batch:
        write_batch(args.write_batch, args.rows)
        return

    from flows.settings import Settings
    from tasks.ingest import LandedFile, sha256_of, validate_file

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        landing = home / "landing" / "interactions-benchmark.csv"
        landing.parent.mkdir()
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--write-batch", str(landing)], check=True)
        settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        from tasks import ledger

        digest = sha256_of(landing)
        batch_id = ledger.record_received(ledger.connect(settings.ledger_url), landing.name, digest, landing.stat().st_size, "interactions")
        landed = LandedFile(batch_id, landing.name, str(landing), "interactions", digest)
        if args.partitions > 1:
            from distributed import Client, LocalCluster

            from data_checks.interactions import check_partition

            settings.validation_partitions = args.partitions
            with LocalCluster(n_workers=args.partitions, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
                def on_cluster(parts, limits):
                    return client.gather(client.map(check_partition, client.scatter(parts), limits=limits, pure=False))

                started = time.perf_counter()
                result = validate_file(landed, settings, on_cluster)
                seconds = time.perf_counter() - started
        else:
            started = time.perf_counter()
            result = validate_file(landed, settings)
            seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "rows": result.rows_in,
        "rows_accepted": result.rows_accepted,
        "rows_quarantined": result.rows_quarantined,
        "seconds": round(seconds, 3),
        "rows_per_second": round(result.rows_in / seconds),
        "peak_rss_mb": round(peak_mb, 1),
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}, "
                   f"{len(__import__('os').sched_getaffinity(0))} cores",
        "partitions": args.partitions,
        "target": "500k rows in 5 s or less",
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
