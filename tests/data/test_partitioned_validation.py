"""Validation by partitions (docs/scaling.md): the same split as validating a batch in one piece.

Risks guarded: a cross-row rule (one user per order, exact repeats, the order's size) missed
because an order's lines were checked in different partitions; rows reordered or lost when the
partitions are put back together; a batch-level verdict (wrong column type, too many errors)
reached differently; the Dask task runner path drifting from the single-process one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from data_checks.interactions import partition_by_order, validate_interactions
from data_checks.landing import read_landing_bytes
from data_checks.sources.online_retail import write_landing
from data_checks.sources.synthetic import BatchOptions, SyntheticShop, write_weeks
from models.settings import Settings
from flows.validate_landing import validate_new_files
from tasks import ledger
from tests.conftest import TINY_SHOP
from tests.data.test_interactions_suite import LIMITS, as_landed, good_rows
from tests.data.test_online_retail import SHARED_DATA

PARTITIONS = (2, 3, 7)


def assert_same_split(raw: pd.DataFrame, max_bad_row_share: float = 0.2) -> None:
    whole = validate_interactions(raw, max_bad_row_share, LIMITS)
    for partitions in PARTITIONS:
        parts = validate_interactions(raw, max_bad_row_share, LIMITS, partitions=partitions)
        assert parts.status == whole.status and parts.batch_reasons == whole.batch_reasons
        assert parts.rule_counts == whole.rule_counts  # our masks and GE's counts, rule by rule
        pd.testing.assert_frame_equal(parts.accepted, whole.accepted)
        pd.testing.assert_frame_equal(parts.quarantined, whole.quarantined)


def test_a_synthetic_week_with_every_kind_of_bad_row_splits_the_same():
    raw = as_landed(SyntheticShop(0, TINY_SHOP).week(3, BatchOptions(bad_row_share=0.1)))
    # Cross-row problems too: an order naming two users, and exact repeats of a line.
    raw.loc[5, "order_id"] = raw.loc[6, "order_id"]
    raw.loc[5, "user_id"] = "someone-else"
    raw = pd.concat([raw, raw.iloc[[10, 11, 11]]], ignore_index=True)
    result = validate_interactions(raw, 0.2, LIMITS)
    assert {"order_single_user", "exact_duplicate"} <= {c.rule for c in result.rule_counts if c.rows}
    assert_same_split(raw)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"the real file is not at {SHARED_DATA}")
def test_a_real_online_retail_month_splits_the_same(tmp_path: Path):
    written = write_landing(SHARED_DATA, tmp_path, "month")
    month = next(p for p in written if p.name.endswith("2011-01.csv"))
    raw, _ = read_landing_bytes(month.read_bytes(), month.name)
    assert len(raw) > 30_000
    assert_same_split(raw)


def test_an_order_is_never_split_across_partitions():
    raw = as_landed(SyntheticShop(0, TINY_SHOP).week(0))
    parts = partition_by_order(raw, 4)
    assert len(parts) == 4 and sum(len(p) for p in parts) == len(raw)
    owners = pd.concat([pd.Series(i, index=p["order_id"].unique()) for i, p in enumerate(parts)])
    assert owners.index.is_unique  # each order id in exactly one partition
    assert all(p.index.is_monotonic_increasing for p in parts)


def test_batch_verdicts_are_reached_the_same_way():
    wrong_type = good_rows(40)
    wrong_type["price"] = "n/a"
    assert_same_split(wrong_type)
    assert validate_interactions(wrong_type, 0.2, LIMITS, partitions=3).batch_reasons[0].startswith("column price is not numeric")
    broken = good_rows(40)
    broken.loc[:14, "item_id"] = pd.NA  # 15 of 40 rows with an error: more than 20%
    assert_same_split(broken)
    assert validate_interactions(broken, 0.2, LIMITS, partitions=3).status == "rejected"


def accepted_and_quarantined(settings) -> dict[str, pd.DataFrame]:
    files = sorted(settings.accepted_dir.glob("*-interactions-*.parquet")) + sorted(settings.quarantine_dir.glob("*.parquet"))
    return {f"{p.parent.name}/{p.name}": pd.read_parquet(p) for p in files}


@pytest.mark.slow
def test_the_flow_on_a_local_dask_cluster_gives_the_same_split(settings, prefect_server, tmp_path, monkeypatch):
    # Dask's worker processes inherit the environment: point them at the tests' Prefect server
    # rather than each starting a temporary one.
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    write_weeks(settings.landing_dir, range(0, 3), bad_rows_weeks=(1, 2), config=TINY_SHOP)
    one_piece = Settings(home=tmp_path / "one-piece", landing_dir=settings.landing_dir, landing_settle_seconds=0)
    partitioned = Settings(home=tmp_path / "partitioned", landing_dir=settings.landing_dir, landing_settle_seconds=0, validation_partitions=2)

    by_dask = validate_new_files(partitioned)
    by_one = validate_new_files(one_piece)

    assert [(v.file_name, v.status, v.rows_accepted, v.rows_quarantined) for v in by_dask] == [
        (v.file_name, v.status, v.rows_accepted, v.rows_quarantined) for v in by_one
    ]
    assert [v.rule_table for v in by_dask] == [v.rule_table for v in by_one]
    dask_files, one_files = accepted_and_quarantined(partitioned), accepted_and_quarantined(one_piece)
    assert sorted(dask_files) == sorted(one_files) and len(dask_files) == 5  # 3 accepted, 2 quarantine files
    for name, frame in one_files.items():
        pd.testing.assert_frame_equal(dask_files[name], frame)
    for home in (partitioned, one_piece):
        rows = ledger.all_batches(ledger.connect(home.ledger_url))
        assert all(r.rows_in == r.rows_accepted + r.rows_quarantined for r in rows)
    # The partitions ran as tasks of their own on the cluster: two for each interactions file.
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="check-partition")))
    assert len(runs) == 6 and all(run.state.is_completed() for run in runs)


def test_an_event_stream_without_orders_splits_the_same_in_partitions():
    from tests.data.test_interactions_suite import event_stream

    raw = pd.concat([event_stream(200), event_stream(200).iloc[:20]], ignore_index=True)  # exact repeats
    raw.loc[30, "event_type"] = "wishlist"
    whole = validate_interactions(raw, 0.2, LIMITS)
    parts = validate_interactions(raw, 0.2, LIMITS, partitions=4)
    assert whole.rule_failures == parts.rule_failures and whole.rule_failures["exact_duplicate"] == 20
    pd.testing.assert_frame_equal(whole.accepted, parts.accepted)
    pd.testing.assert_frame_equal(whole.quarantined, parts.quarantined)
    assert len(partition_by_order(raw, 4)) > 1  # rows without an order are spread by user
