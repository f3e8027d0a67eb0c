"""The interaction contract on good and bad batches.

Risks guarded: a bad row reaching training, a good row lost, GE and our row masks disagreeing
(then the quarantine would not be what GE reports), a broken feed accepted row by row.
"""

from __future__ import annotations

import pandas as pd
import pytest

from data_checks.contract import REASON_COLUMN
from data_checks.interactions import ContractLimits, validate_interactions
from data_checks.sources.synthetic import BatchOptions, SyntheticShop
from models.settings import Settings
from tests.conftest import TINY_SHOP

LIMITS = ContractLimits(
    earliest=pd.Timestamp("2000-01-01", tz="UTC"),
    now=pd.Timestamp("2026-11-01", tz="UTC"),
    max_quantity=10_000,
    max_unit_price=100_000.0,
    non_product_item_pattern=Settings().non_product_item_pattern,
)


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
            "order_id": [f"o{i}" for i in range(n)],  # one row per order: a key for the assertions
            "country": ["United Kingdom"] * n,
        }
    ).astype("string")


def test_a_good_synthetic_week_is_accepted_whole():
    raw = as_landed(SyntheticShop(0, TINY_SHOP).week(0))
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.status == "accepted"
    assert result.rows_accepted == len(raw) and result.rows_quarantined == 0
    assert result.ge_result["success"] is True
    assert str(result.accepted["event_time"].dtype) == "datetime64[ns, UTC]"
    assert not [c for c in result.accepted.columns if c.startswith("_")]  # helper columns stay behind


# (column, value, the rule it must break): one bad row in a batch of 40 good ones.
BAD_VALUES = [
    ("user_id", pd.NA, "anonymous_user"),
    ("item_id", pd.NA, "item_id_present"),
    ("order_id", pd.NA, "order_id_present"),
    ("quantity", "0", "quantity_not_zero"),
    ("quantity", "-3", "cancellation"),
    ("quantity", "two", "quantity_present"),
    ("quantity", "1.5", "quantity_present"),
    ("quantity", "80995", "quantity_outlier"),
    ("price", "-1", "price_not_negative"),
    ("price", "NaN", "price_present"),
    ("price", "inf", "price_plausible"),
    ("price", "0", "zero_price"),
    ("event_time", "2099-01-01T00:00:00Z", "event_time_in_window"),
    ("event_time", "1999-12-31T00:00:00Z", "event_time_in_window"),
    ("event_time", "yesterday", "event_time_present"),
    ("item_id", "POST", "non_product_item"),
]


@pytest.mark.parametrize(("column", "value", "rule"), BAD_VALUES, ids=[f"{c}={v}" for c, v, _ in BAD_VALUES])
def test_each_bad_value_is_quarantined_under_the_rule_it_broke(column, value, rule):
    raw = good_rows(40)
    raw.loc[7, column] = value
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.status == "partially_accepted"
    assert result.rows_quarantined == 1 and result.rows_accepted == 39
    assert result.quarantined[REASON_COLUMN].tolist() == [rule]
    # The quarantine keeps the value as it arrived, so nothing is lost to parsing.
    assert result.quarantined[column].isna().all() if value is pd.NA else result.quarantined[column].tolist() == [value]
    assert result.ge_unexpected == result.rule_failures


def test_a_write_off_and_a_row_with_two_problems():
    raw = good_rows(10)
    raw.loc[0, ["quantity", "price", "user_id"]] = ["-5", "0", pd.NA]  # stock written off, no customer
    raw.loc[1, ["user_id", "price"]] = [pd.NA, "-1"]
    result = validate_interactions(raw, 0.5, LIMITS)
    reasons = dict(zip(result.quarantined["order_id"], result.quarantined[REASON_COLUMN]))
    assert reasons == {"o0": "anonymous_user;write_off", "o1": "price_not_negative;anonymous_user"}


def test_exact_duplicates_keep_the_first_copy():
    raw = pd.concat([good_rows(5), good_rows(5).iloc[[1, 1, 3]]], ignore_index=True)
    result = validate_interactions(raw, 0.5, LIMITS)
    assert result.rows_accepted == 5 and result.rows_quarantined == 3
    assert set(result.quarantined[REASON_COLUMN]) == {"exact_duplicate"}
    assert sorted(result.accepted["order_id"]) == ["o0", "o1", "o2", "o3", "o4"]


def test_an_order_with_two_users_is_an_error():
    raw = good_rows(4)
    raw.loc[[0, 1], "order_id"] = "shared"
    result = validate_interactions(raw, 0.9, LIMITS)
    assert result.rule_failures["order_single_user"] == 2


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda df: df.drop(columns=["user_id"]), "missing required columns: user_id"),
        (lambda df: df.assign(coupon="X1"), "unexpected columns: coupon"),
        (lambda df: df.rename(columns={"item_id": "sku"}), "missing required columns: item_id"),
        (lambda df: df.assign(price="£1.25"), "column price is not numeric: 10 of 10 values do not parse (e.g. '£1.25')"),
        (lambda df: df.iloc[0:0], "the batch has no rows"),
    ],
    ids=["missing column", "extra column", "renamed column", "prices as text", "no rows"],
)
def test_a_broken_batch_is_rejected_whole(change, reason):
    raw = change(good_rows(10))
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.status == "rejected"
    assert reason in result.reasons
    assert result.rows_accepted == 0 and result.rows_quarantined == len(raw)
    assert result.quarantined[REASON_COLUMN].str.startswith("batch rejected").all()


def test_errors_past_the_share_reject_but_policy_rows_never_do():
    raw = good_rows(10)
    raw.loc[:2, "price"] = "-1"  # 30% errors
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.status == "rejected"
    assert "30.0% of rows have errors" in result.reasons[0]
    assert result.rule_failures["price_not_negative"] == 3

    anonymous = good_rows(10)
    anonymous.loc[:5, "user_id"] = pd.NA  # 60% guest checkouts: a fact of the shop, not a defect
    result = validate_interactions(anonymous, 0.2, LIMITS)
    assert result.status == "partially_accepted" and result.rows_quarantined == 6


@pytest.mark.parametrize("share", [0.05, 0.15])
def test_a_spoiled_synthetic_week_balances_and_ge_agrees(share):
    raw = as_landed(SyntheticShop(1, TINY_SHOP).week(2, BatchOptions(bad_row_share=share)))
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.status == "partially_accepted"
    assert result.rows_quarantined == int(len(raw) * share)
    assert result.rows_accepted + result.rows_quarantined == len(raw)
    assert result.ge_unexpected == result.rule_failures
    assert not result.ge_result["success"]


def event_stream(n: int = 40) -> pd.DataFrame:
    """A click log: users, items, times and event types; no quantity, price, order or country."""
    types = ["view", "View ", "add to cart", "Add-To-Cart", "purchase"]
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(n)],
            "item_id": [f"i{i % 5}" for i in range(n)],
            "event_time": (pd.Timestamp("2026-01-05T10:00:00Z") + pd.to_timedelta(range(n), unit="min")).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event_type": [types[i % len(types)] for i in range(n)],
        }
    ).astype("string")


def test_an_event_stream_without_sale_columns_is_accepted_with_its_rules_not_applicable():
    result = validate_interactions(event_stream(), 0.2, LIMITS)
    assert result.status == "accepted" and result.rows_accepted == 40
    assert result.ge_unexpected == result.rule_failures
    # The vocabulary's own names, whatever case, spaces or hyphens the source wrote.
    assert result.accepted["event_type"].value_counts().to_dict() == {"view": 16, "add_to_cart": 16, "purchase": 8}
    # Every contract column is there; the ones the source does not send are null.
    assert result.accepted[["quantity", "price", "order_id", "country", "order_lines"]].isna().all().all()
    assert set(result.not_applicable) == {
        "order_id_present", "country_present", "quantity_present", "price_present", "quantity_not_zero", "price_not_negative",
        "price_plausible", "order_single_user", "cancellation", "write_off", "zero_price", "quantity_outlier",
    }
    assert not {"order_id_present", "price_present", "country_present"} & set(result.rule_failures)


def test_a_source_without_event_types_sends_purchases_and_every_rule_applies():
    result = validate_interactions(good_rows(), 0.2, LIMITS)
    assert result.accepted["event_type"].tolist() == ["purchase"] * 6
    assert result.not_applicable == ["event_type_known"]


@pytest.mark.parametrize("value", ["wishlist", "purchased", "", "NULL"])
def test_an_event_type_outside_the_vocabulary_is_an_error(value):
    raw = event_stream()
    raw.loc[3, "event_type"] = value if value else pd.NA
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.quarantined[REASON_COLUMN].tolist() == ["event_type_known"]
    assert result.rows_accepted == 39


def test_a_sale_needs_its_price_quantity_and_order_but_a_view_does_not():
    raw = good_rows(4).assign(event_type=["view", "view", "purchase", "purchase"])
    raw.loc[[0, 2], ["price", "quantity", "order_id"]] = pd.NA
    result = validate_interactions(raw, 0.5, LIMITS)
    assert result.quarantined[REASON_COLUMN].tolist() == ["order_id_present;quantity_present;price_present"]
    assert result.quarantined["user_id"].tolist() == ["u2"]
    assert result.accepted["user_id"].tolist() == ["u0", "u1", "u3"]


def test_without_a_price_a_negative_quantity_is_still_a_cancellation():
    raw = good_rows(6).drop(columns=["price"])
    raw.loc[2, "quantity"] = "-3"
    result = validate_interactions(raw, 0.2, LIMITS)
    assert result.quarantined[REASON_COLUMN].tolist() == ["cancellation"]
    assert "write_off" in result.not_applicable and "cancellation" not in result.not_applicable


def test_a_purchase_is_the_same_row_with_or_without_its_type_and_a_view_is_another():
    from data_checks.interactions import coerce, row_fingerprints

    untyped = coerce(good_rows(3))
    typed = coerce(good_rows(3).assign(event_type="purchase"))
    viewed = coerce(good_rows(3).assign(event_type="view"))
    assert row_fingerprints(untyped).tolist() == row_fingerprints(typed).tolist()
    assert not set(row_fingerprints(viewed)) & set(row_fingerprints(typed))


def test_the_default_window_takes_any_plausible_history_and_refuses_a_zero_clock():
    from tasks.ingest import contract_limits

    raw = good_rows(3)
    raw.loc[0, "event_time"] = "1995-08-01T00:00:00Z"  # older than most shops, not than the web
    raw.loc[1, "event_time"] = "1970-01-01T00:00:00Z"  # a Unix time of 0: a clock that was never set
    result = validate_interactions(raw, 0.5, contract_limits(Settings()))
    assert result.quarantined["user_id"].tolist() == ["u1"]
    assert result.quarantined[REASON_COLUMN].tolist() == ["event_time_in_window"]
