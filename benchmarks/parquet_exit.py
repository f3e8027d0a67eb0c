"""How often a process that read and wrote Parquet aborts at exit, by the way it opened the files.

    python benchmarks/parquet_exit.py                 # 1,000 processes each way
    python benchmarks/parquet_exit.py --processes 300 --out /tmp/parquet_exit.json

Each child process merges a small catalog into one Parquet file ten times (read, concatenate,
write beside it, rename: what tasks/ingest.py `_merge_catalog` does) and exits. "pandas" opens the
files the way `pd.read_parquet(path)` / `DataFrame.to_parquet(path)` do, handing Arrow a Python
file object; "models.files" has Arrow open them itself (`models.files.read_parquet` /
`write_parquet`, which every Parquet file of freshrec goes through). A child that finished its
work and then ended on SIGABRT ("terminate called without an active exception": one of Arrow's
threads alive past the interpreter's shutdown, apache/arrow#34314) counts as an abort; any other
failure stops the benchmark. Three children run at a time, so the machine is busy as in a test
run or a worker running several flows.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys
import pandas as pd
from models.files import read_parquet, write_parquet

way, target = sys.argv[1], sys.argv[2]
items = pd.DataFrame({"item_id": [f"i{n}" for n in range(40)], "title": "a title", "category": pd.NA, "price": 1.0})
for start in range(0, 40, 4):
    catalog = items.iloc[start : start + 4]
    if os.path.exists(target):
        merged = pd.read_parquet(target) if way == "pandas" else read_parquet(target)
        catalog = pd.concat([merged, catalog]).drop_duplicates("item_id", keep="last")
    catalog = catalog.reset_index(drop=True)
    if way == "pandas":
        catalog.to_parquet(target + ".tmp", index=False)
    else:
        write_parquet(catalog, target + ".tmp")
    os.replace(target + ".tmp", target)
print("done")
"""
WAYS = ("pandas", "models.files")


def child(way: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-c", CHILD, way, str(Path(folder) / "catalog.parquet")], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and not (done.returncode == -6 and done.stdout.strip() == "done"):
        raise RuntimeError(f"a {way} child failed (exit {done.returncode}) before its work was done:\n{done.stderr[-2000:]}")
    return done.returncode


def run(way: str, processes: int, parallel: int) -> dict:
    codes: collections.Counter = collections.Counter()
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        for n, code in enumerate(pool.map(child, [way] * processes), start=1):
            codes[code] += 1
            if n % 100 == 0 or n == processes:
                print(f"  {way}: {n:,} of {processes:,} processes, {codes[-6]} aborted at exit", flush=True)
    return {"processes": processes, "aborted_at_exit": codes[-6], "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1000, help="child processes per way")
    parser.add_argument("--parallel", type=int, default=3, help="children running at once")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "parquet_exit.json")
    args = parser.parse_args()
    import pandas
    import pyarrow

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, python {platform.python_version()}",
        "pyarrow": pyarrow.__version__,
        "pandas": pandas.__version__,
        "parallel": args.parallel,
        "ways": {},
    }
    for way in WAYS:
        result["ways"][way] = run(way, args.processes, args.parallel)
    print(f"\n{'way':<14} {'processes':>10} {'aborted at exit':>16} {'seconds':>9}")
    for way, figures in result["ways"].items():
        print(f"{way:<14} {figures['processes']:>10,} {figures['aborted_at_exit']:>16} {figures['seconds']:>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
