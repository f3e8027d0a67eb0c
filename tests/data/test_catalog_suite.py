"""The catalog contract. Risks guarded: an item described twice, an item with no id, a catalog
without titles accepted as if it could describe anything."""

from __future__ import annotations

import pandas as pd

from data_checks.catalog import validate_catalog
from data_checks.contract import REASON_COLUMN


def catalog(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "title", "category", "price"]).astype("string")


def test_good_catalog_is_accepted():
    result = validate_catalog(catalog([("A", "red mug", "kitchen", "2.5"), ("B", "blue mug", "kitchen", "2.5")]), 0.2)
    assert result.status == "accepted" and result.rows_accepted == 2
    assert result.accepted["price"].tolist() == [2.5, 2.5]


def test_bad_catalog_rows_are_quarantined_by_name():
    raw = catalog([
        ("A", "red mug", "kitchen", "2.5"),
        ("A", "red mug, new photo", "kitchen", "2.6"),  # the same item again
        ("B", None, None, "1.0"),  # no title
        (None, "orphan", None, "1.0"),  # no id
        ("C", "lamp", "lighting", "-4"),  # negative list price
        ("D", "candle", "lighting", None),  # price is optional
    ] + [(f"X{i}", f"item {i}", None, "1") for i in range(10)])
    result = validate_catalog(raw, 0.5)
    reasons = result.quarantined[REASON_COLUMN].tolist()
    assert reasons == ["item_id_unique", "title_present", "item_id_present", "price_not_negative"]
    assert result.rows_accepted + result.rows_quarantined == len(raw)
    assert result.ge_unexpected == result.rule_failures


def test_a_catalog_without_titles_is_rejected():
    result = validate_catalog(pd.DataFrame({"item_id": ["A"], "name": ["mug"]}).astype("string"), 0.2)
    assert result.status == "rejected"
    assert result.reasons == ["missing required columns: title", "unexpected columns: name"]
