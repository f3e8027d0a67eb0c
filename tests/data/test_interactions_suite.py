"""The interaction contract on good and bad batches.

Risks guarded: a bad row reaching training, a good row lost, GE and our row masks disagreeing
(then the quarantine would not be what GE reports), a broken feed accepted row by row.
"""

from __future__ import annotations

import pandas as pd
import pytest

from data_checks.contract import REASON_COLUMN
from data_checks.interactions import validate_interactions
from data_checks.sources.synthetic import SyntheticShop
from tests.conftest import TINY_SHOP

EARLIEST = pd.Timestamp("2000-01-01", tz="UTC")
NOW = pd.Timestamp("2026-11-01", tz="UTC")


def as_landed(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame as read from a landing file: every value text, missing values as NA."""
    text = frame.copy()
    if pd.api.types.is_datetime64_any_dtype(text["event_time"]):
        text["event_time"] = text["event_time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return text.astype("string")


def good_rows(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "item_id": [f"i{i % 3}" for i in range(n)],
            "event_time": ["2026-01-05T10:00:00Z"] * n,
            "quantity": ["2"] * n,
            "price": ["1.25"] * n,
            "order_id": [f"o{i // 2}" for i in range(n)],
            "country": ["United Kingdom"] * n,
        }
    ).astype("string")


def test_a_good_synthetic_week_is_accepted_whole():
    raw = as_landed(SyntheticShop(0, TINY_SHOP).week(0))
    result = validate_interactions(raw, 0.2, EARLIEST, NOW)
    assert result.status == "accepted"
    assert result.ge_success
    assert result.rows_accepted == len(raw) and result.rows_quarantined == 0
    assert str(result.accepted["event_time"].dtype) == "datetime64[ns, UTC]"


def test_each_bad_row_is_quarantined_with_the_rule_it_broke():
    raw = good_rows(20)
    raw["order_id"] = [f"o{i}" for i in range(20)]  # one row per order: a key for the assertions
    raw.loc[0, "user_id"] = pd.NA  # guest checkout
    raw.loc[1, "quantity"] = "-3"  # cancellation
    raw.loc[2, "price"] = "0"  # write-off
    raw.loc[3, "event_time"] = "2099-01-01T00:00:00Z"  # future
    raw.loc[4, "event_time"] = "1999-12-31T00:00:00Z"  # before the epoch
    raw.loc[5, "quantity"] = "two"  # text in a number column
    raw.loc[6, "quantity"] = "1.5"  # not a count
    raw.loc[7, ["user_id", "price"]] = [pd.NA, "-1"]  # two problems at once
    result = validate_interactions(raw, 0.5, EARLIEST, NOW)

    assert result.status == "partially_accepted"
    assert result.rows_in == result.rows_accepted + result.rows_quarantined == 20
    assert result.rows_quarantined == 8
    reasons = dict(zip(result.quarantined["order_id"], result.quarantined[REASON_COLUMN]))
    assert reasons == {
        "o0": "user_id_present",
        "o1": "quantity_positive",
        "o2": "price_positive",
        "o3": "event_time_in_window",
        "o4": "event_time_in_window",
        "o5": "quantity_present",
        "o6": "quantity_present",
        "o7": "user_id_present;price_positive",
    }
    # The quarantine keeps the values as they arrived, so nothing is lost to parsing.
    assert set(result.quarantined["quantity"]) >= {"two", "1.5", "-3"}
    # GE's own counts agree with the masks that split the rows.
    assert result.ge_unexpected == result.rule_failures
    assert not result.ge_success


def test_a_renamed_column_rejects_the_whole_batch():
    raw = good_rows().rename(columns={"item_id": "sku"})
    result = validate_interactions(raw, 0.2, EARLIEST, NOW)
    assert result.status == "rejected"
    assert result.rows_accepted == 0 and result.rows_quarantined == len(raw)
    assert "missing required columns: item_id" in result.reasons[0]
    assert result.quarantined[REASON_COLUMN].str.startswith("batch rejected").all()


def test_too_many_bad_rows_reject_the_batch():
    raw = good_rows(10)
    raw.loc[:2, "price"] = "-1"  # 30% bad
    result = validate_interactions(raw, 0.2, EARLIEST, NOW)
    assert result.status == "rejected"
    assert "30.0% of rows break the contract" in result.reasons[0]
    assert result.rows_quarantined == 10
    assert result.rule_failures["price_positive"] == 3


def test_an_empty_batch_is_rejected():
    result = validate_interactions(good_rows(0), 0.2, EARLIEST, NOW)
    assert result.status == "rejected"
    assert result.reasons == ["the batch has no rows"]


@pytest.mark.parametrize("share", [0.05, 0.15])
def test_spoiled_synthetic_week_balances(share):
    from data_checks.sources.synthetic import BatchOptions

    raw = as_landed(SyntheticShop(1, TINY_SHOP).week(2, BatchOptions(bad_row_share=share)))
    result = validate_interactions(raw, 0.2, EARLIEST, NOW)
    assert result.status == "partially_accepted"
    assert result.rows_quarantined == int(len(raw) * share)
    assert result.rows_accepted + result.rows_quarantined == len(raw)
    assert result.ge_unexpected == result.rule_failures
