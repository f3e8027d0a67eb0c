"""Adapter: the UCI Online Retail file -> landing files in the data contract, uncleaned.

Every source row becomes exactly one contract row (cancellations, guest checkouts, postage,
duplicates and all), so validation meets the real problems. Only the representation changes:
customer ids lose their float suffix ("17850.0" -> "17850") and UK local times become UTC.
The item catalog is derived from the descriptions: an item's most frequent one is its title.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_checks.contract import CATALOG_PREFIX, INTERACTIONS_PREFIX
from data_checks.sources import write_landing_csv

SOURCE_COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
SHOP_TIMEZONE = "Europe/London"
PERIODS = {"month": "%Y-%m", "week": "%G-W%V", "day": "%Y-%m-%d"}


def read_source(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    missing = [c for c in SOURCE_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"{path} is not the Online Retail file: missing columns {', '.join(missing)}")
    return raw


def local_times(raw: pd.DataFrame) -> pd.Series:
    """Invoice times in the shop's own time zone (the source has no zone)."""
    naive = pd.to_datetime(raw["InvoiceDate"], errors="coerce", format="ISO8601")
    return naive.dt.tz_localize(SHOP_TIMEZONE, ambiguous="NaT", nonexistent="shift_forward")


def to_contract(raw: pd.DataFrame) -> pd.DataFrame:
    """One contract row per source row. A time that cannot be placed keeps its source text, so
    validation quarantines it instead of the adapter dropping it."""
    local = local_times(raw)
    utc_text = local.dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return pd.DataFrame(
        {
            "user_id": raw["CustomerID"].str.replace(r"\.0$", "", regex=True),
            "item_id": raw["StockCode"],
            "event_time": utc_text.where(local.notna(), raw["InvoiceDate"]),
            "quantity": raw["Quantity"],
            "price": raw["UnitPrice"],
            "order_id": raw["InvoiceNo"],
            "country": raw["Country"],
        }
    )


def catalog(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per stock code: its most frequent description as the title, its median price."""
    described = raw.dropna(subset=["StockCode"])
    titles = (
        described.dropna(subset=["Description"])
        .groupby(["StockCode", "Description"]).size().rename("n").reset_index()
        .sort_values(["StockCode", "n", "Description"], ascending=[True, False, True])
        .drop_duplicates("StockCode").set_index("StockCode")["Description"]
    )
    prices = pd.to_numeric(described["UnitPrice"], errors="coerce")
    median_price = prices[prices > 0].groupby(described["StockCode"]).median()
    codes = pd.Index(described["StockCode"].unique(), name="item_id")
    return pd.DataFrame(
        {
            "item_id": codes,
            "title": titles.reindex(codes).to_numpy(),
            "category": pd.NA,
            "price": median_price.reindex(codes).round(2).to_numpy(),
        }
    )


def write_landing(source: Path, landing_dir: Path, period: str = "month") -> list[Path]:
    """Write one interactions file per period and the catalog; returns the paths written."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    raw = read_source(source)
    contract = to_contract(raw)
    # Rows whose time cannot be read go with the first period: they are kept, and quarantined there.
    labels = local_times(raw).dt.strftime(PERIODS[period])
    labels = labels.fillna(labels.dropna().min() if labels.notna().any() else "unknown")
    landing_dir.mkdir(parents=True, exist_ok=True)
    written = [write_landing_csv(catalog(raw), landing_dir / f"{CATALOG_PREFIX}-online-retail.csv")]
    rows_written = 0
    for label, rows in contract.groupby(labels, sort=True):
        written.append(write_landing_csv(rows, landing_dir / f"{INTERACTIONS_PREFIX}-online-retail-{label}.csv"))
        rows_written += len(rows)
    if rows_written != len(raw):  # the adapter's promise: every source row lands exactly once
        raise RuntimeError(f"wrote {rows_written:,} rows for {len(raw):,} source rows")
    return written
