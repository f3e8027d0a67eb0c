"""The scaling benchmark (benchmarks/scale.py): its shops are valid data, and at its smoke size
it runs the real bootstrap and update and reports every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import scale
from data_checks.interactions import validate_interactions
from data_checks.landing import parquet_as_text
from models.settings import Settings
from tasks.ingest import contract_limits

REPO = Path(__file__).resolve().parents[2]


def test_a_generated_week_keeps_the_contract_and_the_shop_it_was_asked_for(tmp_path):
    # Guards against a benchmark that measures the quarantine instead of training: the
    # generated lines must pass validation, a few exact repeats of a line aside.
    shop = scale.parse_shop("20k:2k:500", batch_rows=5_000)
    world = scale.World(shop, seed=0)
    path = scale.write_parquet(world.week(3, 20_000), tmp_path / "interactions-week003.parquet")
    week, notes = parquet_as_text(pd.read_parquet(path))  # as landing reads it
    result = validate_interactions(week, 0.2, contract_limits(Settings()))
    assert notes == []
    assert len(week) == 20_000 and result.rows_accepted >= 0.95 * len(week)
    quarantined = result.quarantined["quarantine_reason"].unique().tolist() if result.rows_quarantined else []
    assert set(quarantined) <= {"exact_duplicate"}
    assert week["user_id"].nunique() > 1_000 and week["item_id"].isin(world.catalog()["item_id"]).all()
    assert week.groupby("order_id")["user_id"].nunique().max() == 1  # an order names one user
    times = pd.to_datetime(week["event_time"], utc=True)
    assert times.between(scale.EPOCH + pd.Timedelta(weeks=3), scale.EPOCH + pd.Timedelta(weeks=4)).all()
    top_share = week["item_id"].value_counts(normalize=True).iloc[0]
    assert 0.01 < top_share < 0.3  # a long tail, not a uniform catalog nor one item
    assert week.duplicated(["user_id", "item_id"]).mean() > 0.1  # users buy again


def test_shops_are_named_or_given_as_rows_users_items():
    assert scale.parse_shop("1m", 1_000_000) == scale.Shop("1M-100k-20k", 1_000_000, 100_000, 20_000, 1_000_000)
    assert scale.parse_shop("200k:20k:5k", 100_000).history_rows == 200_000
    assert [s.history_rows for s in scale.shops_of(scale.parse_args(["--shop", "1m,5m", "--shop", "20m"]))] == [1_000_000, 5_000_000, 20_000_000]
    assert scale.parse_shop("20m", 1_000_000).weeks == 20  # no history file above about 1M rows


def test_the_bootstrap_trains_on_the_newest_weeks_that_hold_the_rows_asked_for():
    shop = scale.parse_shop("20m", 1_000_000)
    assert scale.trained_weeks(shop, None) == scale.trained_weeks(shop, 30_000_000) == 20
    assert scale.trained_weeks(shop, 5_000_000) == 5 and scale.trained_weeks(shop, 5_000_001) == 6
    assert scale.trained_weeks(shop, 1) == 1
    settings, _ = scale.phase_settings(shop, 1, False, 5_000_000)
    assert settings["holdout_fraction"] == 0.05  # a quarter batch of the rows trained on


def test_the_results_name_the_commit_and_every_changed_file():
    state = scale.code_state()
    assert len(state["commit"]) == 40
    assert all((REPO / path).exists() or not path for path in state["uncommitted_changes"])  # whole paths


def test_task_runs_are_counted_in_their_stage():
    assert scale.stage_of(scale.task_name_of("train-challenger-ad8")) == "train"
    assert scale.stage_of(scale.task_name_of("validate-batch-05d")) == "validate"
    assert scale.stage_of(scale.task_name_of("load-champion-312")) == "other"


@pytest.mark.slow
def test_the_smoke_size_runs_bootstrap_and_an_update_and_reports_every_stage(tmp_path):
    out = tmp_path / "results" / "scale.json"
    done = subprocess.run(
        # Half the history trained on, the older half landed as already consumed.
        [sys.executable, "benchmarks/scale.py", "--smoke", "--trained-history-rows", "10k", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "torch" in result["machine"] and "--smoke" in result["command"]
    (size,) = result["sizes"]
    rows, users, items = scale.SMOKE
    assert (size["history_rows"], size["users"], size["items"], size["batch_rows"]) == (rows, users, items, scale.SMOKE_BATCH_ROWS)
    assert size["bootstrap_seconds"] > 0 and size["bootstrap_peak_rss_mb"] > 100
    assert (size["bootstrap_trained_files"], size["bootstrap_trained_rows"], size["consumed_untrained_files"]) == (4, rows // 2, 4)
    assert 0.95 * rows // 2 <= size["consumed_untrained_rows"] <= rows // 2
    # Every consumed row, trained on or not, went into the replay history (it holds them all).
    assert size["replay_reservoir_rows"] == size["history_rows_folded"] >= size["consumed_untrained_rows"] + 0.7 * rows // 2
    assert 100 < size["peak_rss_mb"] < 16_000
    stages = size["stages"]
    assert set(stages) == {*scale.STAGES, "other"} and all(v >= 0 for v in stages.values())
    assert stages["validate"] > 0 and stages["train"] > 0 and stages["evaluate"] > 0
    assert sum(stages.values()) <= size["update_flow_seconds"] + 0.5 <= size["update_seconds"]  # rounding to 0.1 s each
    # The update trained: the volume signal fired, and the MLflow run logged what it trained on.
    assert size["decision"] == "update" and any(r.startswith("new rows") for r in size["reasons"])
    assert size["training"]["new_rows"] > 0 and size["training"]["epochs"] >= 1
    assert size["train_interactions_per_second"] > 0 and size["sgd_interactions_per_second"] >= size["train_interactions_per_second"]
    assert isinstance(size["promoted"], bool)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert not (tmp_path / "work" / "smoke").exists()  # removed once measured (--keep keeps it)
