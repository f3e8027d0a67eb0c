"""The data contract every source is mapped to (docs/your-data.md).

An interaction needs a user, an item and a time; everything else is optional. A source without
``event_type`` sends purchases; one without ``order_id`` has a basket per user and day; one
without ``quantity``, ``price`` or ``country`` simply has no rule, feature or drift check that
reads them. Accepted rows always carry every column (the absent ones null), so every accepted
file of every source has one schema.
"""

from __future__ import annotations

import pandas as pd

REQUIRED_INTERACTION_COLUMNS: dict[str, str] = {
    "user_id": "string",
    "item_id": "string",
    "event_time": "datetime64[ns, UTC]",
}
OPTIONAL_INTERACTION_COLUMNS: dict[str, str] = {
    "quantity": "Int64",
    "price": "Float64",
    "order_id": "string",
    "country": "string",
    "event_type": "string",
}
INTERACTION_COLUMNS: dict[str, str] = {**REQUIRED_INTERACTION_COLUMNS, **OPTIONAL_INTERACTION_COLUMNS}

# What an interaction was. A source's own names are mapped to these (docs/mappings.md); case,
# spaces and hyphens do not matter ("Add to cart" is add_to_cart). Training weighs each type
# (settings *_weight) and evaluation scores one (settings.target_event).
EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
DEFAULT_EVENT_TYPE = "purchase"  # the type of every row of a source without event_type

CATALOG_COLUMNS: dict[str, str] = {
    "item_id": "string",
    "title": "string",
    "category": "string",
    "price": "float64",
}

# Landing file names say what they hold; anything else in landing/ is left alone and reported.
INTERACTIONS_PREFIX = "interactions"
CATALOG_PREFIX = "catalog"
LANDING_SUFFIXES = (".csv", ".parquet")
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")
UNKNOWN_KIND = (f"the name does not say what it holds: landing files are named {INTERACTIONS_PREFIX}*.csv|parquet "
                f"or {CATALOG_PREFIX}*.csv|parquet")


def kind_of(name: str) -> str | None:
    """What a landing file holds, by its name (letter case aside): interactions*.csv|parquet or
    catalog*.csv|parquet; None for anything else."""
    lower = name.lower()
    if not lower.endswith(LANDING_SUFFIXES):
        return None
    if lower.startswith(INTERACTIONS_PREFIX):
        return "interactions"
    if lower.startswith(CATALOG_PREFIX):
        return "catalog"
    return None


def in_progress(name: str) -> bool:
    """A name copy tools give a file while they write it (rsync's .name.XXXX, name.tmp,
    name.part): left alone, without a record, until it is renamed to its final name."""
    return name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES)

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


def event_types_of(interactions: pd.DataFrame) -> pd.Series:
    """Each row's event type; rows of a source without types (or of files accepted before
    types were kept) are purchases."""
    if "event_type" not in interactions.columns:
        return pd.Series(DEFAULT_EVENT_TYPE, index=interactions.index, dtype="string")
    return interactions["event_type"].astype("string").fillna(DEFAULT_EVENT_TYPE)


def with_contract_columns(interactions: pd.DataFrame) -> pd.DataFrame:
    """``interactions`` with every contract column, an absent one null (event_type: purchase),
    so frames accepted before a column was optional read like those accepted after."""
    missing = {c: pd.Series(pd.NA, index=interactions.index, dtype=t) for c, t in OPTIONAL_INTERACTION_COLUMNS.items() if c not in interactions.columns}
    if "event_type" in missing:
        missing["event_type"] = event_types_of(interactions)
    return interactions.assign(**missing) if missing else interactions


def of_type(interactions: pd.DataFrame, event_type: str) -> pd.DataFrame:
    """The rows of one event type."""
    return interactions[(event_types_of(interactions) == event_type).to_numpy()]


def basket_keys(interactions: pd.DataFrame) -> pd.Series:
    """Each row's basket within its user: its order where it has one, else the user's day (a
    source without orders, or a view outside any order). A day's key cannot be an order id."""
    days = "\x00" + interactions["event_time"].dt.strftime("%Y-%m-%d").astype("string")
    if "order_id" not in interactions.columns:
        return days
    return interactions["order_id"].astype("string").fillna(days)
