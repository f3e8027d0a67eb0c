"""The Online Retail adapter and what the contract makes of the real problems in that data.

Risks guarded: the adapter cleaning (losing) rows, times shifted wrongly across summer time, a
known kind of row (cancellation, write-off, postage, guest checkout) landing in training.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from data_checks.contract import REASON_COLUMN
from data_checks.sources.online_retail import write_landing
from tasks.ingest import find_new_files, validate_file

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",  # exact duplicate
    "C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-1,2010-12-01 09:41:00,2.55,14527.0,United Kingdom",
    "536414,22139,,-56,2010-12-01 11:52:00,0,,United Kingdom",  # write-off
    "536370,POST,POSTAGE,3,2010-12-01 08:45:00,18,12583.0,France",
    "536544,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,2010-12-01 14:32:00,5.91,,United Kingdom",  # guest
    "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,,United Kingdom",
    "563186,22139,RETROSPOT TEA SET CERAMIC 11 PC,1,2011-06-01 10:00:00,0,12583.0,France",  # free item
    "581483,23843,\"PAPER CRAFT , LITTLE BIRDIE\",80995,2011-12-09 09:15:00,2.08,16446.0,United Kingdom",
]
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "online_retail.csv.gz"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "online_retail.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join([HEADER, *ROWS]) + "\n")
    return path


def test_every_source_row_lands_once_with_utc_times(source, tmp_path):
    written = write_landing(source, tmp_path / "landing", "month")
    names = [p.name for p in written]
    assert names == [
        "catalog-online-retail.csv",
        "interactions-online-retail-2010-12.csv",
        "interactions-online-retail-2011-06.csv",
        "interactions-online-retail-2011-08.csv",
        "interactions-online-retail-2011-12.csv",
    ]
    landed = pd.concat([pd.read_csv(p, dtype=str) for p in written[1:]])
    assert len(landed) == len(ROWS)
    june = landed[landed["order_id"] == "563186"].iloc[0]
    assert june["event_time"] == "2011-06-01T09:00:00Z"  # British Summer Time is UTC+1
    assert june["user_id"] == "12583"  # the float suffix goes, the id stays
    catalog = pd.read_csv(written[0], dtype=str).set_index("item_id")
    assert catalog.loc["85123A", "title"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert catalog.loc["71053", "price"] == "3.39"


@pytest.mark.parametrize("period", ["week", "day"])
def test_other_periods_split_the_same_rows(source, tmp_path, period):
    written = write_landing(source, tmp_path / period, period)
    assert sum(len(pd.read_csv(p)) for p in written[1:]) == len(ROWS)


def test_the_contract_names_each_real_problem(source, settings):
    write_landing(source, settings.landing_dir, "month")
    results = [validate_file(f, settings) for f in find_new_files(settings)]
    quarantined = pd.concat(pd.read_parquet(r.quarantine_path) for r in results if r.quarantine_path and r.file_name.startswith("interactions"))
    reasons = dict(zip(quarantined["order_id"] + "/" + quarantined["item_id"], quarantined[REASON_COLUMN]))
    assert reasons == {
        "536365/71053": "exact_duplicate",
        "C536379/85123A": "cancellation",
        "536414/22139": "anonymous_user;write_off",
        "536370/POST": "non_product_item",
        "536544/85123A": "anonymous_user",
        "A563185/B": "anonymous_user;non_product_item",
        "563186/22139": "zero_price",
        "581483/23843": "quantity_outlier",
    }
    interactions = [r for r in results if r.file_name.startswith("interactions")]
    assert sum(r.rows_accepted for r in interactions) == 2


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"the real file is not at {SHARED_DATA}")
def test_the_real_file_is_fully_accounted_for(settings):
    """Counts that ../shared/data/README.md documents for the real data, found by the contract."""
    write_landing(SHARED_DATA, settings.landing_dir, "month")
    results = [validate_file(f, settings) for f in find_new_files(settings)]
    interactions = [r for r in results if r.file_name.startswith("interactions")]
    assert sum(r.rows_in for r in interactions) == 541_909
    assert sum(r.rows_accepted + r.rows_quarantined for r in interactions) == 541_909
    counts = Counter()
    for r in interactions:
        for reason in pd.read_parquet(r.quarantine_path)[REASON_COLUMN]:
            counts.update(reason.split(";"))
    assert counts["anonymous_user"] == 135_080  # CustomerID missing
    assert counts["cancellation"] == 9_288  # "C" invoices
    assert counts["write_off"] == 1_336  # negative quantity at price 0
    assert counts["price_not_negative"] == 2  # "Adjust bad debt"
    assert counts["zero_price"] + counts["write_off"] == 2_515  # all the zero prices
