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

With ``--chunk-rows N`` a file of more than N records is validated in pieces of about N rows
(`validation_chunk_rows`, default 1,000,000: a 1M-row file is validated whole). With ``--drift``
the accepted batch is then drift-checked as the flow does (tasks/monitor.py `batch_drift`: the
accepted file read back, `detect_drift` on `drift_sample_rows` whole orders) against a champion's
reference and counts built from two synthetic weeks of the same shop (by the child, as
tests/data/test_drift.py `champion_view` does), and the peak memory is that of both.

    python benchmarks/validation.py --rows 5000000 --drift --out benchmarks/results/validation_5m.json
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


SHOP = dict(n_users=50_000, n_items=8_000)
HISTORY_ORDERS_PER_WEEK = 100_000  # the champion's two weeks: about 900k rows


def write_batch(path: Path, rows: int, champion_dir: Path | None = None) -> None:
    from data_checks.sources.synthetic import BatchOptions, ShopConfig, SyntheticShop

    # Baskets average under five lines: ask for enough orders, then cut to exactly `rows`.
    shop = SyntheticShop(0, ShopConfig(**SHOP, orders_per_week=rows // 4))
    frame = shop.week(0, BatchOptions(bad_row_share=0.03)).head(rows)
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    if champion_dir is not None:
        write_champion(champion_dir, SyntheticShop(0, ShopConfig(**SHOP, orders_per_week=HISTORY_ORDERS_PER_WEEK)))


def write_champion(folder: Path, shop) -> None:
    """A champion's drift reference and counts, as tests/data/test_drift.py `champion_view` builds them."""
    import pandas as pd

    from data_checks.drift import reference_sample

    history = pd.concat([shop.week(1), shop.week(2)], ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    reference_sample(history, 20_000, seed=0).to_parquet(folder / "reference.parquet", index=False)
    history["item_id"].value_counts().to_frame().to_parquet(folder / "item_counts.parquet")
    history["user_id"].value_counts().to_frame().to_parquet(folder / "user_counts.parquet")
    shop.catalog(include_new_items=True).to_parquet(folder / "catalog.parquet", index=False)


def drift_check(accepted_path: str, champion_dir: Path, report_path: Path, settings):
    """What tasks/monitor.py `batch_drift` does with a champion's files."""
    import pandas as pd

    from data_checks.drift import ChampionCounts, detect_drift

    current = pd.read_parquet(accepted_path)
    reference = pd.read_parquet(champion_dir / "reference.parquet")
    catalog = pd.read_parquet(champion_dir / "catalog.parquet")
    counts = ChampionCounts(
        pd.read_parquet(champion_dir / "item_counts.parquet")["count"], pd.read_parquet(champion_dir / "user_counts.parquet")["count"],
        catalog.set_index("item_id")["category"],
    )
    return detect_drift(current, reference, counts, report_path, settings.drift_sample_rows, settings.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "validation.json")
    parser.add_argument("--partitions", type=int, default=1, help="check the rows in N partitions on a local Dask cluster")
    parser.add_argument("--chunk-rows", type=int, default=None, help="validation_chunk_rows: a larger file is validated in pieces")
    parser.add_argument("--drift", action="store_true", help="drift-check the accepted batch after validating it")
    parser.add_argument("--write-batch", type=Path, help=argparse.SUPPRESS)  # the child's job
    parser.add_argument("--champion-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_batch:
        write_batch(args.write_batch, args.rows, args.champion_dir)
        return

    from models.settings import Settings
    from tasks.ingest import LandedFile, sha256_of, validate_file

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        landing = home / "landing" / "interactions-benchmark.csv"
        landing.parent.mkdir()
        champion = ["--champion-dir", str(home / "champion")] if args.drift else []
        subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--write-batch", str(landing), *champion], check=True)
        chunking = {} if args.chunk_rows is None else {"validation_chunk_rows": args.chunk_rows}
        settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", **chunking)
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
        validation_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        drift = {}
        if args.drift:
            started = time.perf_counter()
            drifted = drift_check(result.accepted_path, home / "champion", home / "drift.html", settings)
            drift = {"drift_seconds": round(time.perf_counter() - started, 3), "drift_share": round(drifted.drift_share, 4),
                     "drift_sample_rows": settings.drift_sample_rows}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "rows": result.rows_in,
        "rows_accepted": result.rows_accepted,
        "rows_quarantined": result.rows_quarantined,
        "seconds": round(seconds, 3),
        "rows_per_second": round(result.rows_in / seconds),
        **drift,
        "validation_peak_rss_mb": round(validation_peak_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "validation_chunk_rows": settings.validation_chunk_rows,
        "in_pieces": result.rows_in > settings.validation_chunk_rows,
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}, "
                   f"{len(__import__('os').sched_getaffinity(0))} cores",
        "partitions": args.partitions,
        "target": "5M rows validated and drift-checked in 60 s or less, peak RSS 4 GB or less" if args.drift else "500k rows in 5 s or less",
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
