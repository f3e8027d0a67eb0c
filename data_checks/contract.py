"""The data contract every source is mapped to (see DESIGN.md, "The data contract")."""

from __future__ import annotations

import pandas as pd

INTERACTION_COLUMNS: dict[str, str] = {
    "user_id": "string",
    "item_id": "string",
    "event_time": "datetime64[ns, UTC]",
    "quantity": "Int64",
    "price": "Float64",
    "order_id": "string",
    "country": "string",
}
OPTIONAL_INTERACTION_COLUMNS: dict[str, str] = {"event_type": "string"}

CATALOG_COLUMNS: dict[str, str] = {
    "item_id": "string",
    "title": "string",
    "category": "string",
    "price": "float64",
}

# Landing file names say what they hold; anything else in landing/ is left alone and reported.
INTERACTIONS_PREFIX = "interactions"
CATALOG_PREFIX = "catalog"

# The column the quarantine adds to every bad row: the rules it broke, ";"-separated.
REASON_COLUMN = "quarantine_reason"

# How exports write "no value" in a text column (SQL NULL, Python None, pandas NaN and <NA>,
# R and spreadsheet NA, N/A, #N/A). An id or country that is one of these, in any case once
# stripped, is missing rather than a real id: without this, user "NULL" is trained on as one
# customer. The price of the rule: a shop whose country column holds ISO codes loses Namibia
# ("NA") to `country_present`.
NULL_MARKERS: tuple[str, ...] = ("NULL", "None", "NaN", "NA", "N/A", "#N/A", "<NA>")


def empty_interactions() -> pd.DataFrame:
    """No rows, the contract's columns and types: what concatenating nothing should give."""
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in INTERACTION_COLUMNS.items()})
