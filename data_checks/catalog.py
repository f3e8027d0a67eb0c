"""The item catalog contract: ids and titles present, one row per item, sane prices."""

from __future__ import annotations

import pandas as pd

from data_checks.contract import CATALOG_COLUMNS
from data_checks.rules import RowRule, ValidationResult, apply_rules, between, not_null, rejected, schema_problems

REQUIRED = ("item_id", "title")


def empty_catalog() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in CATALOG_COLUMNS.items()})


def catalog_rules() -> list[RowRule]:
    return [
        not_null("item_id_present", "item_id", "error", "no item id"),
        not_null("title_present", "title", "policy", "no title: the item cannot be described"),
        between("price_not_negative", "price", "error", "a negative list price", min_value=0),
        between("item_id_unique", "_repeat", "policy", "the same item id again in this file (the first row is kept)",
                max_value=0),
    ]


def coerce_catalog(raw: pd.DataFrame) -> pd.DataFrame:
    typed = pd.DataFrame(index=raw.index)
    for column in ("item_id", "title", "category"):
        values = raw[column] if column in raw.columns else pd.Series(pd.NA, index=raw.index, dtype="string")
        typed[column] = values.astype("string").str.strip().replace("", pd.NA)
    price = raw["price"] if "price" in raw.columns else pd.Series(pd.NA, index=raw.index, dtype="string")
    typed["price"] = pd.to_numeric(price, errors="coerce").astype("Float64")
    typed["_repeat"] = typed.groupby("item_id", dropna=True).cumcount().fillna(0).astype("int64")
    return typed


def validate_catalog(raw: pd.DataFrame, max_bad_row_share: float) -> ValidationResult:
    reasons, ge_result = schema_problems(raw, list(REQUIRED), list(CATALOG_COLUMNS), "catalog")
    if reasons:
        return rejected(raw, reasons, empty_catalog(), ge_result=ge_result)
    return apply_rules(raw, coerce_catalog(raw), catalog_rules(), max_bad_row_share, "catalog", empty_catalog())
