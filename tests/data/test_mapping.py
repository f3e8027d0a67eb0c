"""The mapping-file adapter: a declared column mapping -> landing files in the data contract.

Risks guarded: a mapping file that is wrong in a way nobody notices (a typo'd key, YAML turning
NO into False) silently landing the wrong columns; the adapter dropping or reordering rows;
times shifted wrongly (zones, summer time, Unix units); an unknown value cleaned away instead
of quarantined; an already-ingested landing file rewritten under the ledger's hash.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from data_checks.contract import REASON_COLUMN
from data_checks.sources import online_retail
from data_checks.sources.mapping import (
    ConversionError,
    MappingError,
    catalog_to_contract,
    interactions_to_contract,
    load_mapping,
    read_source_file,
    write_landing,
)
from tasks.ingest import find_new_files, validate_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "mappings"

RETAILROCKET_EVENTS = """\
timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,addtocart,248676,
1433193500981,121688,transaction,15335,11117
1434322800000,257597,view,355908,
"""

BASE = {
    "name": "shop",
    "period": "week",
    "interactions": {
        "files": "events*.csv",
        "columns": {"user_id": "user", "item_id": "sku", "event_time": "at", "event_type": "kind"},
        "event_types": {"view": "view", "buy": "purchase"},
    },
    "catalog": {"files": "items.csv", "columns": {"item_id": "sku", "title": "name"}},
}
DELETE = object()


def write_mapping(folder: Path, document: dict, name: str = "mapping.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def edited(*edits: tuple[tuple[str, ...], object]) -> dict:
    """BASE with each (key path, value) set, or removed where the value is DELETE."""
    document = copy.deepcopy(BASE)
    for keys, value in edits:
        parent = document
        for key in keys[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[keys[-1]]
        else:
            parent[keys[-1]] = value
    return document


def events_csv(folder: Path, rows: list[str], name: str = "events.csv", header: str = "user,sku,at,kind") -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def convert(folder: Path, document: dict, rows: list[str], header: str = "user,sku,at,kind") -> pd.DataFrame:
    mapping = load_mapping(write_mapping(folder, document))
    return interactions_to_contract(read_source_file(events_csv(folder, rows, header=header), mapping.interactions), mapping)


def test_retailrocket_example_maps_the_event_log(tmp_path):
    # The worked example must stay a mapping that works: the docs point users at it.
    shutil.copy(EXAMPLES / "retailrocket.yaml", tmp_path)
    (tmp_path / "events.csv").write_text(RETAILROCKET_EVENTS, encoding="utf-8")
    mapping = load_mapping(tmp_path / "retailrocket.yaml")
    written = write_landing(mapping, tmp_path / "landing")
    assert [p.name for p in written] == ["interactions-retailrocket-2015-W23.csv", "interactions-retailrocket-2015-W24.csv"]
    landed = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in written], ignore_index=True)
    assert landed.to_dict("records") == [
        {"user_id": "257597", "item_id": "355908", "event_time": "2015-06-02T05:02:12Z", "order_id": "", "event_type": "view"},
        {"user_id": "992329", "item_id": "248676", "event_time": "2015-06-02T05:50:14Z", "order_id": "", "event_type": "add_to_cart"},
        {"user_id": "121688", "item_id": "15335", "event_time": "2015-06-01T21:18:20Z", "order_id": "11117", "event_type": "purchase"},
        {"user_id": "257597", "item_id": "355908", "event_time": "2015-06-14T23:00:00Z", "order_id": "", "event_type": "view"},
    ]


def test_online_retail_example_matches_the_code_adapter_except_user_id(tmp_path):
    # Two adapters of one source must agree on what the contract rows are; the one documented
    # difference is that a mapping does not strip CustomerID's ".0".
    shutil.copy(EXAMPLES / "online_retail.yaml", tmp_path)
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
    rows = [
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
        "563186,22139,RETROSPOT TEA SET CERAMIC 11 PC,1,2011-06-01 10:00:00,0,12583.0,France",  # summer time
        "C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-1,2011-10-30 01:30:00,2.55,14527.0,United Kingdom",  # ambiguous
        "536414,22139,,-56,2011-03-27 01:30:00,0,,United Kingdom",  # skipped by the clocks
        "536415,22139,,1,not a date,0,,United Kingdom",
    ]
    source = tmp_path / "online_retail.csv"
    source.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    mapping = load_mapping(tmp_path / "online_retail.yaml")
    raw = read_source_file(source, mapping.interactions)
    mapped, code = interactions_to_contract(raw, mapping), online_retail.to_contract(raw)
    assert list(mapped.columns) == list(code.columns)
    pd.testing.assert_frame_equal(mapped.drop(columns="user_id"), code.drop(columns="user_id").astype("string"))
    assert mapped["user_id"].tolist() == ["17850.0", "12583.0", "14527.0", pd.NA, pd.NA]
    assert mapped["event_time"].tolist()[:2] == ["2010-12-01T08:26:00Z", "2011-06-01T09:00:00Z"]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(edited((("owner",), "me")), "owner: unknown key (allowed: name, period, interactions, catalog)", id="unknown-top-key"),
        pytest.param(edited((("interactions", "file"), "x.csv")), "interactions.file: unknown key (allowed: files,", id="unknown-table-key"),
        pytest.param(edited((("catalog", "time"), {"zone": "UTC"})), "catalog.time: unknown key", id="catalog-has-no-time"),
        pytest.param(edited((("interactions", "time"), {"zones": "UTC"})), "interactions.time.zones: unknown key (allowed: format, zone)", id="unknown-time-key"),
        pytest.param(edited((("name",), DELETE)), "name: missing", id="no-name"),
        pytest.param(edited((("interactions",), DELETE)), "interactions: missing", id="no-interactions"),
        pytest.param(edited((("interactions", "files"), DELETE)), "interactions.files: missing", id="no-files"),
        pytest.param(edited((("interactions", "columns"), DELETE)), "interactions.columns: missing", id="no-columns"),
        pytest.param(edited((("interactions", "columns", "event_time"), DELETE)),
                     "interactions.columns.event_time: required", id="required-not-mapped"),
        pytest.param(edited((("catalog", "columns", "title"), DELETE)), "catalog.columns.title: required", id="catalog-title-not-mapped"),
        pytest.param(edited((("interactions", "columns", "sku"), "sku")), "interactions.columns.sku: not a contract column (user_id, item_id,",
                     id="unknown-contract-column"),
        pytest.param(edited((("interactions", "columns", "country"), "land"), (("interactions", "constants"), {"country": "DE"})),
                     "interactions.constants.country: also mapped in interactions.columns", id="mapped-and-constant"),
        pytest.param(edited((("interactions", "columns", "order_id"), "user")), "source column 'user' is mapped to user_id and order_id",
                     id="source-column-twice"),
        pytest.param(edited((("interactions", "event_types", "buy"), "order")), "interactions.event_types.buy: 'order' is not a contract event type (view, click, add_to_cart, purchase)",
                     id="event-type-outside-vocabulary"),
        pytest.param(edited((("interactions", "event_types", "Buy "), "purchase")), "interactions.event_types.Buy : the same name as 'buy'",
                     id="event-names-that-collide"),
        pytest.param(edited((("interactions", "columns", "event_type"), DELETE)), "interactions.event_types: there is no event type to map",
                     id="event-types-without-column"),
        pytest.param(edited((("interactions", "constants"), {"event_type": "order"})), "interactions.constants.event_type: 'order' is not a contract event type",
                     id="constant-event-type-outside-vocabulary"),
        pytest.param(edited((("interactions", "time"), {"format": "yyyy-mm-dd"})), "interactions.time.format: 'yyyy-mm-dd' is not iso8601, unix_s, unix_ms or a strptime pattern",
                     id="time-format-no-directive"),
        pytest.param(edited((("interactions", "time"), {"format": "%Y-%m-%d %Q"})), "interactions.time.format: '%Y-%m-%d %Q'", id="time-format-bad-directive"),
        pytest.param(edited((("interactions", "time"), {"format": "%H:%M"})), "it does not hold the whole date", id="time-format-without-date"),
        pytest.param(edited((("interactions", "time"), {"zone": "Europe/Londn"})), "interactions.time.zone: 'Europe/Londn' is not an IANA time zone", id="bad-zone"),
        pytest.param(edited((("interactions", "time"), {"format": "unix_s", "zone": "Europe/Berlin"})), "interactions.time.zone: unix times count from 1970-01-01 UTC",
                     id="zone-with-unix-times"),
        pytest.param(edited((("name",), "Retail Rocket")), "name: 'Retail Rocket' must be 1-40 lowercase letters, digits and hyphens", id="bad-name"),
        pytest.param(edited((("name",), "a" * 41)), "must be 1-40 lowercase letters", id="long-name"),
        pytest.param(edited((("period",), "weekly")), "period: 'weekly' is not one of month, week, day, none", id="bad-period"),
        pytest.param(edited((("interactions", "constants"), {"country": False})), "interactions.constants.country: False was read as a boolean",
                     id="yaml-boolean"),
        pytest.param(edited((("interactions", "columns", "user_id"), 1)), "interactions.columns.user_id: 1 was read as a number, not text", id="yaml-number"),
        pytest.param(edited((("interactions", "files"), "")), "interactions.files: is empty", id="empty-text"),
        pytest.param(edited((("interactions", "columns"), ["user", "sku"])), "interactions.columns: must be a mapping", id="columns-a-list"),
        pytest.param(edited((("interactions", "format"), "xlsx")), "interactions.format: 'xlsx' is not one of csv, parquet", id="bad-format"),
        pytest.param(edited((("interactions", "delimiter"), ";;")), "interactions.delimiter: ';;' must be one character", id="bad-delimiter"),
        pytest.param(edited((("interactions", "encoding"), "utf-9")), "interactions.encoding: 'utf-9' is not an encoding", id="bad-encoding"),
        pytest.param(edited((("catalog", "format"), "parquet"), (("catalog", "delimiter"), ";")), "catalog.delimiter: only for csv files", id="delimiter-for-parquet"),
    ],
)
def test_each_rule_of_a_mapping_file_names_its_key(tmp_path, document, expected):
    # A wrong mapping must fail before it converts anything, saying where and what to change.
    path = write_mapping(tmp_path, document)
    with pytest.raises(MappingError) as raised:
        load_mapping(path)
    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param("m.yaml", "- name\n- shop\n", "the file is a list, not a mapping", id="not-a-mapping"),
        pytest.param("m.yaml", "", "the file is empty", id="empty-file"),
        pytest.param("m.yaml", "name: shop\ninteractions: [files\n", "not valid YAML at line 3", id="unparseable-yaml"),
        pytest.param("m.yaml", "name: shop\nname: other\n", "key 'name' is given twice", id="duplicate-key"),
        pytest.param("m.yaml", "name: shop\nperiod: week\ninteractions:\n  files: e.csv\n  columns: {user_id: u, item_id: i, event_time: t}\n"
                     "  constants: {country: NO}\n", "interactions.constants.country: False was read as a boolean", id="norway"),
        pytest.param("m.toml", "name = 'shop'\n[interactions\n", "not valid TOML", id="unparseable-toml"),
        pytest.param("m.json", "{}", "ends in .yaml, .yml or .toml", id="other-extension"),
    ],
)
def test_a_file_that_is_not_a_mapping_says_where(tmp_path, name, text, expected):
    # YAML's own traps (NO read as False, a key given twice) are errors, not silent values.
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingError) as raised:
        load_mapping(path)
    assert expected in str(raised.value)


def test_every_problem_is_reported_at_once(tmp_path):
    # Fixing a mapping one error per run is how people give up on validating it.
    document = edited((("name",), "Shop"), (("period",), "year"), (("interactions", "columns", "sku"), "x"))
    with pytest.raises(MappingError) as raised:
        load_mapping(write_mapping(tmp_path, document))
    assert len(raised.value.problems) == 3


def test_toml_has_the_same_structure(tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_text(
        'name = "shop"\nperiod = "day"\n[interactions]\nfiles = "events.csv"\n'
        '[interactions.columns]\nuser_id = "user"\nitem_id = "sku"\nevent_time = "at"\n'
        '[interactions.time]\nformat = "unix_s"\n',
        encoding="utf-8",
    )
    mapping = load_mapping(path)
    assert (mapping.name, mapping.period, mapping.interactions.time.format) == ("shop", "day", "unix_s")


def test_a_time_that_cannot_be_read_keeps_its_text(tmp_path):
    # Dropped or blanked, the row would vanish from the ledger's count; kept, it is quarantined.
    contract = convert(tmp_path, BASE, ["u1,i1,2015-06-01T10:00:00,view", "u2,i2,yesterday,view", "u3,i3,,view"])
    assert contract["event_time"].tolist() == ["2015-06-01T10:00:00Z", "yesterday", pd.NA]


def test_unix_times_in_seconds_and_milliseconds(tmp_path):
    seconds = edited((("interactions", "time"), {"format": "unix_s"}))
    assert convert(tmp_path, seconds, ["u,i,1433221332.9,view", "u,i,1e40,view", "u,i,12x,view"])["event_time"].tolist() == [
        "2015-06-02T05:02:12Z", "1e40", "12x"]
    millis = edited((("interactions", "time"), {"format": "unix_ms"}))
    assert convert(tmp_path, millis, ["u,i,1433221332117,view"])["event_time"].tolist() == ["2015-06-02T05:02:12Z"]


def test_event_names_are_mapped_and_an_unknown_one_is_kept(tmp_path):
    # An event the mapping does not name must reach validation as it is, to be quarantined there.
    contract = convert(tmp_path, BASE, ["u,i,2015-06-01,view", "u,i,2015-06-01, BUY ", "u,i,2015-06-01,wishlist", "u,i,2015-06-01,"])
    assert contract["event_type"].tolist() == ["view", "purchase", "wishlist", pd.NA]


def test_without_an_event_table_names_pass_through(tmp_path):
    contract = convert(tmp_path, edited((("interactions", "event_types"), DELETE)), ["u,i,2015-06-01, View "])
    assert contract["event_type"].tolist() == [" View "]


def test_constants_fill_every_row_and_only_named_columns_are_written(tmp_path):
    document = edited((("interactions", "constants"), {"country": "Germany", "quantity": "1"}))
    contract = convert(tmp_path, document, ["u1,i1,2015-06-01,view", "u2,i2,2015-06-02,buy"])
    assert list(contract.columns) == ["user_id", "item_id", "event_time", "quantity", "country", "event_type"]
    assert contract["country"].tolist() == ["Germany", "Germany"]
    assert contract["quantity"].tolist() == ["1", "1"]


def test_a_strptime_pattern_in_a_zone(tmp_path):
    # 01/07/2015 is 1 July in Europe, 7 January in the US: the pattern decides, and summer time applies.
    document = edited((("interactions", "time"), {"format": "%d/%m/%Y %H:%M", "zone": "Europe/Berlin"}))
    contract = convert(tmp_path, document, ["u,i,01/07/2015 12:30,view", "u,i,07/01/2015 12:30,view", "u,i,2015-07-01 12:30,view"])
    assert contract["event_time"].tolist() == ["2015-07-01T10:30:00Z", "2015-01-07T11:30:00Z", "2015-07-01 12:30"]


def test_naive_times_are_placed_in_the_zone_and_offsets_win(tmp_path):
    document = edited((("interactions", "time"), {"zone": "America/New_York"}))
    contract = convert(tmp_path, document, [
        "u,i,2015-01-15 09:00:00,view",  # EST, UTC-5
        "u,i,2015-07-15 09:00:00,view",  # EDT, UTC-4
        "u,i,2015-07-15T09:00:00+02:00,view",  # an explicit offset is not the zone's
        "u,i,2015-07-15T09:00:00Z,view",
        "u,i,2015-11-01 01:30:00,view",  # the clocks go back: this local time happens twice
    ])
    assert contract["event_time"].tolist() == [
        "2015-01-15T14:00:00Z", "2015-07-15T13:00:00Z", "2015-07-15T07:00:00Z", "2015-07-15T09:00:00Z", "2015-11-01 01:30:00"]


def test_a_missing_source_column_names_the_file_and_its_columns(tmp_path):
    mapping = load_mapping(write_mapping(tmp_path, edited((("catalog",), DELETE))))
    events_csv(tmp_path, ["u,i,2015-06-01,view"], header="user,item,at,kind")
    with pytest.raises(ConversionError) as raised:
        write_landing(mapping, tmp_path / "landing")
    message = str(raised.value)
    assert "events.csv" in message and "'sku' (interactions.columns.item_id)" in message and "'user', 'item', 'at', 'kind'" in message


def test_a_glob_matching_nothing_is_an_error(tmp_path):
    mapping = load_mapping(write_mapping(tmp_path, edited((("catalog",), DELETE))))
    with pytest.raises(ConversionError, match="interactions.files 'events\\*.csv' matches no file"):
        write_landing(mapping, tmp_path / "landing")


def test_a_landed_file_is_never_rewritten(tmp_path):
    # The ledger names a landing file by its hash: new content under an old name would be
    # either ignored or a second, different batch of the same name.
    mapping = load_mapping(write_mapping(tmp_path, edited((("catalog",), DELETE))))
    events_csv(tmp_path, ["u1,i1,2015-06-01T10:00:00,view"])
    landing = tmp_path / "landing"
    [landed] = write_landing(mapping, landing)
    assert write_landing(mapping, landing) == []  # identical content: nothing to write
    original = landed.read_bytes()
    events_csv(tmp_path, ["u1,i1,2015-06-01T10:00:00,view", "u2,i2,2015-06-02T10:00:00,buy"])
    with pytest.raises(ConversionError, match=f"{landed} already exists with other content"):
        write_landing(mapping, landing)
    assert landed.read_bytes() == original
    assert sorted(p.name for p in landing.iterdir()) == [landed.name]


def test_every_source_row_lands_once_across_periods_and_files(tmp_path):
    # The adapter's promise: rows in the landing files == rows in the sources, none moved.
    document = edited((("period",), "day"), (("catalog",), DELETE))
    mapping = load_mapping(write_mapping(tmp_path, document))
    events_csv(tmp_path, ["u1,i1,2015-06-01T23:30:00-02:00,view", "u2,i2,2015-06-02T00:10:00Z,buy", "u3,i3,never,buy"], "events-1.csv")
    events_csv(tmp_path, ["u4,i4,2015-06-01T08:00:00Z,view", "u5,i5,2015-06-03T08:00:00Z,view"], "events-2.csv")
    written = write_landing(mapping, tmp_path / "landing")
    assert [p.name for p in written] == ["interactions-shop-2015-06-01.csv", "interactions-shop-2015-06-02.csv", "interactions-shop-2015-06-03.csv"]
    landed = {p.name[-14:-4]: pd.read_csv(p, dtype=str)["user_id"].tolist() for p in written}
    # -02:00 puts u1 on 2 June in UTC; the unreadable time goes with the first period.
    assert landed == {"2015-06-01": ["u3", "u4"], "2015-06-02": ["u1", "u2"], "2015-06-03": ["u5"]}


def test_period_none_writes_one_file_per_source_file_and_the_catalog(tmp_path):
    mapping = load_mapping(write_mapping(tmp_path, edited((("period",), "none"), (("catalog", "constants"), {"category": "toys"}))))
    events_csv(tmp_path, ["u1,i1,2015-06-01,view", "u2,i2,2016-01-01,buy"])
    (tmp_path / "items.csv").write_text("sku,name\ni1,Spinning top\ni1,Spinning top (red)\ni2,\n", encoding="utf-8")
    written = write_landing(mapping, tmp_path / "landing")
    assert [p.name for p in written] == ["catalog-shop-items.csv", "interactions-shop-events.csv"]
    catalog = pd.read_csv(written[0], dtype=str, keep_default_na=False)
    assert catalog.to_dict("records") == [  # one row per source row: repeats are validation's to judge
        {"item_id": "i1", "title": "Spinning top", "category": "toys"},
        {"item_id": "i1", "title": "Spinning top (red)", "category": "toys"},
        {"item_id": "i2", "title": "", "category": "toys"},
    ]
    assert len(pd.read_csv(written[1])) == 2


def test_a_later_export_and_a_grown_catalog_land_beside_the_first_ones(tmp_path):
    """A shop exports every day and adds products: each conversion lands new files, never a
    clash with the files of an earlier one."""
    document = edited((("period",), "none"), (("interactions", "files"), "events-*.csv"), (("catalog", "files"), "items-*.csv"))
    mapping = load_mapping(write_mapping(tmp_path, document))
    events_csv(tmp_path, ["u1,i1,2015-06-01,view"], name="events-day1.csv")
    (tmp_path / "items-day1.csv").write_text("sku,name\ni1,Spinning top\n", encoding="utf-8")
    first = [p.name for p in write_landing(mapping, tmp_path / "landing")]
    events_csv(tmp_path, ["u2,i2,2015-06-02,buy"], name="events-day2.csv")
    (tmp_path / "items-day2.csv").write_text("sku,name\ni2,Yo-yo\n", encoding="utf-8")
    second = [p.name for p in write_landing(mapping, tmp_path / "landing")]
    assert first == ["catalog-shop-items-day1.csv", "interactions-shop-events-day1.csv"]
    assert second == ["catalog-shop-items-day2.csv", "interactions-shop-events-day2.csv"]  # day 1's are unchanged: skipped


def test_two_source_files_that_would_land_under_one_name_are_an_error(tmp_path):
    document = edited((("period",), "none"), (("interactions", "files"), "**/events.csv"), (("catalog",), DELETE))
    mapping = load_mapping(write_mapping(tmp_path, document))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        events_csv(tmp_path / folder, ["u1,i1,2015-06-01,view"])
    with pytest.raises(ConversionError, match="would land as interactions-shop-events.csv"):
        write_landing(mapping, tmp_path / "landing")
    assert not (tmp_path / "landing").exists()  # nothing written


def test_a_catalog_source_without_its_columns_is_an_error(tmp_path):
    mapping = load_mapping(write_mapping(tmp_path, BASE))
    with pytest.raises(ConversionError, match="'name' \\(catalog.columns.title\\)"):
        catalog_to_contract(pd.DataFrame({"sku": ["i1"]}, dtype="string"), mapping)


def test_parquet_ids_and_naive_times(tmp_path):
    # A float id column must not land as "17850.0", and a naive Parquet time is the mapping's zone's.
    document = edited((("interactions", "files"), "events.parquet"), (("interactions", "time"), {"zone": "Europe/London"}),
                      (("catalog",), DELETE))
    pd.DataFrame({
        "user": [17850.0, None], "sku": ["85123A", "22139"], "kind": ["view", "buy"],
        "at": pd.to_datetime(["2011-06-01 10:00:00", "2011-12-01 10:00:00"]),
    }).to_parquet(tmp_path / "events.parquet")
    mapping = load_mapping(write_mapping(tmp_path, document))
    contract = interactions_to_contract(read_source_file(tmp_path / "events.parquet", mapping.interactions), mapping)
    assert contract["user_id"].tolist() == ["17850", pd.NA]
    assert contract["event_time"].tolist() == ["2011-06-01T09:00:00Z", "2011-12-01T10:00:00Z"]


def test_convert_command_end_to_end(tmp_path):
    shutil.copy(EXAMPLES / "retailrocket.yaml", tmp_path)
    source = tmp_path / "export" / "2015-06.csv"  # a name the glob does not match: given on the command line
    source.parent.mkdir()
    source.write_text(RETAILROCKET_EVENTS, encoding="utf-8")
    env = {**os.environ, "FRESHREC_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "flows", "convert", str(tmp_path / "retailrocket.yaml"), str(source)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    landing = tmp_path / "home" / "landing"
    assert run.stdout.split() == [str(landing / "interactions-retailrocket-2015-W23.csv"), str(landing / "interactions-retailrocket-2015-W24.csv")]

    bad = write_mapping(tmp_path, edited((("period",), "weekly")))
    run = subprocess.run([sys.executable, "-m", "flows", "convert", str(bad)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {bad}: not a valid source mapping") and "period: 'weekly'" in run.stderr


def test_validation_quarantines_what_the_mapping_kept(tmp_path, settings):
    # Keeping an unreadable time or an unknown event is only safe if validation then names it.
    shutil.copy(EXAMPLES / "retailrocket.yaml", tmp_path)
    good = "".join(f"{1433221300000 + n * 1000},{n},view,{n},\n" for n in range(10))  # bad rows stay under the rejection share
    (tmp_path / "events.csv").write_text(RETAILROCKET_EVENTS + good + "1433221332117,1,like,2,\nsoon,1,view,2,\n", encoding="utf-8")
    write_landing(load_mapping(tmp_path / "retailrocket.yaml"), settings.landing_dir)
    results = [validate_file(f, settings) for f in find_new_files(settings)]
    quarantined = pd.concat(pd.read_parquet(r.quarantine_path) for r in results if r.quarantine_path)
    assert sum(r.rows_accepted for r in results) == 14
    assert dict(zip(quarantined["event_type"].astype(str), quarantined[REASON_COLUMN])) == {
        "like": "event_type_known", "view": "event_time_present"}
