"""Latency and throughput of the recommendation service (python -m flows serve) over HTTP.

    python benchmarks/serving.py                       # catalogs of 4k and 100k items
    python benchmarks/serving.py --shop 100k --requests 5000

For each shop: a history of order lines is drawn (benchmarks/scale.py's World), a champion is
prepared from it by models.train.prepare (user histories, basket memory with its neighbours,
popularity, consumed items: everything a request reads) with the basket memory's weight at 1,
logged and registered in a SQLite MLflow store as the flows log it (tasks.registry.log_served_model),
and served by `python -m flows serve` in its own process on loopback. The towers' weights are
not trained: what a request costs depends on the shapes and the memory, not on the weights' values.

Then, with HTTP/1.1 keep-alive connections from this process:
  - single: one client, one known user a request, k=20, one request after another (latency);
  - concurrent: ``--clients`` clients at once, the same requests (throughput, and latency under it);
  - batch: one client, ``--batch-users`` users a request, k=20.
Users are drawn at random from the model's users (a tenth are unknown visitors, who get the
popular items). Every answer must be a 200 that names the served version: a failed request fails
the benchmark. The server's CPU seconds and peak memory come from /proc.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
# name -> (history rows, users, items): the demo-sized catalog and the large one.
SHOPS = {"4k": (400_000, 40_000, 4_000), "100k": (5_000_000, 500_000, 100_000)}
MEMORY_WEIGHT = 1.0
UNKNOWN_SHARE = 0.1
FIELDS = {
    "single": "one client, one user a request, k requests one after another: latency over HTTP, seen by the client",
    "concurrent": "--clients clients at once, each on its own connection: throughput, and latency under it",
    "batch": "one client, --batch-users users a request",
    "server_cpu_ms_per_request": "CPU of the service's processes over the single and concurrent phases, per request",
    "server_peak_rss_mb": "peak resident memory of the service's processes (each worker holds the model), summed",
    "load_seconds": "the service's download and load of the version, warm-up included",
}


def build_champion(name: str, work: Path, seed: int) -> dict:
    """Draw the shop's history, prepare a model on it, log and register it as @champion."""
    import mlflow
    from mlflow import MlflowClient

    from benchmarks.scale import Shop, World
    from models.recommender import TrainConfig
    from models.train import prepare
    from tasks.registry import log_served_model
    from models.pyfunc import ServingLimits

    rows, users, items = SHOPS[name]
    started = time.perf_counter()
    world = World(Shop(name, rows, users, items, 0), seed)
    weeks, drawn = [], 0
    while drawn < rows:
        size = min(1_000_000, rows - drawn)
        weeks.append(world.week(len(weeks), size).to_pandas())
        drawn += size
    history = pd.concat(weeks, ignore_index=True)
    catalog = world.catalog()
    print(f"[{name}] drew {len(history):,} rows in {time.perf_counter() - started:.1f} s", flush=True)
    started = time.perf_counter()
    recommender = prepare(history, catalog, TrainConfig(), None)
    recommender.model.memory_weight.fill_(MEMORY_WEIGHT)
    prepare_seconds = time.perf_counter() - started
    print(f"[{name}] prepared {len(recommender.users) :,} users x {len(recommender.items) - 1:,} items in {prepare_seconds:.1f} s", flush=True)

    store = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    experiment = mlflow.create_experiment("serving-benchmark", artifact_location=(work / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        checkpoint, reference = work / "recommender.pt", work / "reference.parquet"
        recommender.save(checkpoint)
        history.sample(min(len(history), 20_000), random_state=seed).to_parquet(reference, index=False)
        example = pd.DataFrame({"user_id": recommender.users.ids[:1] + ["new-visitor"], "k": 3})
        uri = log_served_model(checkpoint, reference, example, ServingLimits()).model_uri
    version = mlflow.register_model(uri, "ecommerce-recommender").version
    MlflowClient().set_registered_model_alias("ecommerce-recommender", "champion", version)
    return {
        "store": store,  # removed from the results: a temporary path
        "users": len(recommender.users),
        "items": len(recommender.items) - 1,
        "history_rows": len(history),
        "memory_entries_per_user": float((recommender.model.memory_items > 0).sum(1).float().mean()),
        "model_mb": round(checkpoint.stat().st_size / 2**20, 1),
        "user_ids": np.asarray(recommender.users.ids, dtype=object),
        "run_id": run.info.run_id,
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(work: Path, store: str, port: int, workers: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")}
    env |= {"FRESHREC_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": store, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(work / "serve.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "flows", "serve", "--port", str(port), "--workers", str(workers)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_healthy(port: int, process: subprocess.Popen, log: Path, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited: {log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/version")
            body = json.loads(connection.getresponse().read())
            if body.get("model_version"):
                return body
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the service did not load a version in {timeout:.0f} s: {log.read_text()[-3000:]}")


def group_processes(group: int) -> list[Path]:
    """/proc entries of the processes in process group ``group``: the service and its workers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == group:  # field 5: the process group
                found.append(stat.parent)
        except (OSError, IndexError, ValueError):  # ended while read
            continue
    return found


def cpu_seconds(group: int) -> float:
    """User and system CPU seconds of the group's live processes."""
    total = 0.0
    for proc in group_processes(group):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def peak_rss_mb(group: int) -> float:
    """The sum of the group's processes' peak resident memory (VmHWM)."""
    total = 0
    for proc in group_processes(group):
        try:
            lines = (proc / "status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)
    return total / 1024


class Client:
    """One keep-alive connection; every answer is checked and timed."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> dict:
        self.connection.request("GET", path)
        return self._answer()

    def post(self, path: str, body: dict) -> dict:
        self.connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        return self._answer()

    def _answer(self) -> dict:
        response = self.connection.getresponse()
        raw = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {raw[:500]!r}")
        body = json.loads(raw)
        if not body.get("model_version") or response.getheader("X-Model-Version") != body["model_version"]:
            raise RuntimeError(f"an answer without its model version: {raw[:300]!r}")
        return body


def user_paths(user_ids: np.ndarray, count: int, k: int, rng: np.random.Generator) -> list[str]:
    from urllib.parse import quote

    chosen = user_ids[rng.integers(0, len(user_ids), count)]
    unknown = rng.random(count) < UNKNOWN_SHARE
    chosen[unknown] = [f"visitor-{i}" for i in range(int(unknown.sum()))]
    return [f"/recommendations/{quote(str(user), safe='')}?k={k}" for user in chosen]


def summarize(latencies: list[float], seconds: float) -> dict:
    values = np.asarray(latencies) * 1000
    return {
        "requests": len(values),
        "seconds": round(seconds, 2),
        "requests_per_second": round(len(values) / seconds, 1),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p90_ms": round(float(np.percentile(values, 90)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def run_clients(port: int, paths: list[str], clients: int) -> dict:
    """``clients`` threads, each with its connection, share ``paths`` (a fixed count) in turn."""
    shares = [paths[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        connection = Client(port)
        start.wait()
        try:
            for path in shares[i]:
                began = time.perf_counter()
                connection.get(path)
                latencies[i].append(time.perf_counter() - began)
        except BaseException as error:  # reported below: the benchmark fails
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]}")
    return summarize([x for part in latencies for x in part], seconds) | {"clients": clients}


def measure(name: str, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix=f"freshrec-serving-{name}-") as scratch:
        work = Path(scratch)
        shop = build_champion(name, work, args.seed)
        user_ids = shop.pop("user_ids")
        store = shop.pop("store")
        port = free_port()
        process = start_service(work, store, port, args.workers)
        try:
            loaded = wait_healthy(port, process, work / "serve.log")
            print(f"[{name}] serving version {loaded['model_version']}, loaded in {loaded['load_seconds']} s", flush=True)
            warm = Client(port)
            for path in user_paths(user_ids, 200, args.k, rng):  # first requests: allocator, caches
                warm.get(path)
            cpu_before = cpu_seconds(process.pid)
            single = run_clients(port, user_paths(user_ids, args.requests, args.k, rng), 1)
            print(f"[{name}] single user, one client: {single}", flush=True)
            concurrent = run_clients(port, user_paths(user_ids, args.requests, args.k, rng), args.clients)
            print(f"[{name}] single user, {args.clients} clients: {concurrent}", flush=True)
            cpu_single = cpu_seconds(process.pid) - cpu_before

            batch_latencies, began = [], time.perf_counter()
            client = Client(port)
            for _ in range(args.batches):
                users = [str(u) for u in user_ids[rng.integers(0, len(user_ids), args.batch_users)]]
                started = time.perf_counter()
                answer = client.post("/recommendations", {"user_ids": users, "k": args.k})
                batch_latencies.append(time.perf_counter() - started)
                assert len(answer["recommendations"]) == len(users)
            batch = summarize(batch_latencies, time.perf_counter() - began) | {"users_per_request": args.batch_users}
            batch["users_per_second"] = round(batch["requests_per_second"] * args.batch_users, 1)
            print(f"[{name}] batches of {args.batch_users}: {batch}", flush=True)
            return {
                "shop": name,
                **shop,
                "load_seconds": loaded["load_seconds"],
                "k": args.k,
                "workers": args.workers,
                "unknown_user_share": UNKNOWN_SHARE,
                "single": single,
                "concurrent": concurrent,
                "batch": batch,
                "server_cpu_ms_per_request": round(1000 * cpu_single / (single["requests"] + concurrent["requests"]), 3),
                "server_peak_rss_mb": round(peak_rss_mb(process.pid), 1),  # every worker's, summed
            }
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("diff", "--name-only", "HEAD").splitlines() + git("ls-files", "--others", "--exclude-standard").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": sorted(changed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", action="append", choices=sorted(SHOPS), help="catalog sizes to measure (repeatable; default all)")
    parser.add_argument("--requests", type=int, default=3_000, help="single-user requests per phase (default 3000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the throughput phase (default 4)")
    parser.add_argument("--batches", type=int, default=100, help="batch requests (default 100)")
    parser.add_argument("--batch-users", type=int, default=100, help="users per batch request (default 100)")
    parser.add_argument("--workers", type=int, default=1, help="the service's --workers (default 1)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results (default: %(default)s)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # benchmarks.scale, when run as a script
    results = {
        "benchmark": "benchmarks/serving.py",
        "command": " ".join(["python", "benchmarks/serving.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "fields": FIELDS,
        **commit(),
        "shops": [],
    }
    for name in args.shop or list(SHOPS):
        results["shops"].append(measure(name, args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # after each shop: a later failure keeps it
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
