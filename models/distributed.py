"""Data-parallel training on several GPUs or hosts, launched by torchrun.

    torchrun --standalone --nproc_per_node=4 -m models.distributed PREPARED.pt ROWS.parquet OUT.pt

``PREPARED.pt`` is a model as ``models.train.prepare`` made it (saved with ``Recommender.save``),
``ROWS.parquet`` the (user_id, item_id[, event_type]) rows to train on. Every process holds the rows and the
model; each takes an equal share of the users of every batch and scores them against all the
batch's items, and DistributedDataParallel averages the gradients, so the update equals
single-process training on the same batches. NCCL on GPUs, gloo on CPUs. Rank 0 writes a
checkpoint each epoch (a restarted launch resumes from it) and the trained model to ``OUT.pt``.
``--holdout`` adds early stopping on a held-out slice (scored by every process alike).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from models.evaluate import METRICS, evaluate
from models.files import read_parquet
from models.recommender import Recommender
from models.train import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("rows", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--holdout", type=Path, default=None, help="parquet of held-out rows for early stopping")
    parser.add_argument("--eval-users", type=Path, default=None, help="parquet with the user_id column of users scored on it")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--max-users", type=int, default=None, help="score the held-out slice on at most this many users")
    parser.add_argument("--metric", choices=METRICS, default="recall", help="the metric early stopping and the memory weight follow")
    parser.add_argument("--backend", default=None, help="nccl or gloo (default: nccl with CUDA, else gloo)")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        parser.error("run me under torchrun (torchrun --nproc_per_node=N -m models.distributed ...)")

    use_cuda = torch.cuda.is_available() and args.backend != "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=args.backend or ("nccl" if use_cuda else "gloo"))
    rank = dist.get_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    try:
        recommender = Recommender.load(args.prepared)
        if not use_cuda:
            recommender.config.device = "cpu"
        rows = read_parquet(args.rows)  # user_id, item_id and, from a source with types, event_type
        validate = None
        if args.holdout is not None:
            holdout = read_parquet(args.holdout)
            users = pd.Index(read_parquet(args.eval_users)["user_id"]) if args.eval_users else pd.Index(rows["user_id"].unique())

            def validate(model: Recommender) -> float:
                scored = evaluate(model, holdout, users, args.k, target_event=model.config.target_event, max_users=args.max_users)
                return scored.value(args.metric)

        progress_path = args.out.with_name(args.out.stem + ".progress.pt")
        trained = train(recommender, rows, validate=validate, checkpoint_path=progress_path, progress=rank == 0)
        if rank == 0:
            trained.save(args.out)
            progress_path.unlink(missing_ok=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
