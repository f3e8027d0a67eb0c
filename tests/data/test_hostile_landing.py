"""Hostile landing data, built from real Online Retail rows: what a careless producer or a copy
in progress puts into landing/, and what freshrec must make of it.

Risks guarded: rows swallowed by a parse and never counted, outputs of two batches overwriting
each other, a half-copied file validated, files skipped without a word, a batch with nothing to
train on read as if it had rows, rows landed twice by overlapping exports trained on twice.
Every case balances in the ledger: rows in = accepted + quarantined, counted from the file.
Cases needing the real file skip when ../shared/data/online_retail.csv.gz is absent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from data_checks.contract import REASON_COLUMN
from data_checks.sources.online_retail import to_contract
from models.settings import Settings
from tasks import ledger
from tasks.ingest import find_new_files, validate_file

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "online_retail.csv.gz"
needs_real_rows = pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data/online_retail.csv.gz")


@pytest.fixture(scope="module")
def real_rows() -> pd.DataFrame:
    """The first 12,000 source rows in the contract (as the adapter lands them): real ids, real
    guest checkouts, cancellations and postage lines, December 2010."""
    if not SHARED_DATA.exists():
        pytest.skip("needs ../shared/data/online_retail.csv.gz")
    head = pd.read_csv(SHARED_DATA, nrows=12_000, dtype="string", keep_default_na=False, na_values=[""])
    return to_contract(head)


def land_csv(settings, name: str, frame: pd.DataFrame) -> Path:
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    path = settings.landing_dir / name
    frame.to_csv(path, index=False)
    return path


def ingest(settings):
    return [validate_file(f, settings) for f in find_new_files(settings)]


def records(settings) -> list[ledger.BatchRecord]:
    return ledger.all_batches(ledger.connect(settings.ledger_url))


def assert_balanced(settings) -> None:
    for row in records(settings):
        assert row.rows_in == row.rows_accepted + row.rows_quarantined, row
        for path, rows in ((row.accepted_path, row.rows_accepted), (row.quarantine_path, row.rows_quarantined)):
            if path and path.endswith(".parquet") and row.kind == "interactions":
                assert len(pd.read_parquet(path)) == rows, (row.file_name, path)


@needs_real_rows
def test_a_day_of_guest_checkouts_only_is_quarantined_not_partially_accepted(settings, real_rows):
    guests = real_rows[real_rows["user_id"].isna()].head(300)
    assert len(guests) == 300  # the real data has them
    land_csv(settings, "interactions-guests.csv", guests)
    (result,) = ingest(settings)
    assert result.status == "quarantined" and result.rows_accepted == 0 and result.accepted_path is None
    assert result.rows_quarantined == result.rows_in == 300
    # Nothing to decide on: continuous training never sees it as a batch with rows.
    assert ledger.undecided_batches(ledger.connect(settings.ledger_url)) == []
    assert_balanced(settings)


@needs_real_rows
def test_an_unclosed_quote_cannot_fold_lines_into_one_value(settings, real_rows):
    rows = real_rows.head(10).copy()
    path = land_csv(settings, "interactions-quote.csv", rows)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ',"Cote d\'Ivoire'  # opens a quote it never closes
    lines[7] = lines[7].rsplit(",", 1)[0] + ',"France"'  # the parser may close it here, lines later
    path.write_text("\n".join(lines) + "\n")
    (result,) = ingest(settings)
    assert result.status == "rejected" and result.rows_in == 10 and result.rows_quarantined == 10
    assert "holds 10 records but parses as" in result.reasons[0]
    kept = pd.read_parquet(result.quarantine_path)
    assert kept["line"].tolist() == lines[1:] and kept["line_number"].tolist() == list(range(2, 12))
    assert_balanced(settings)


@needs_real_rows
def test_a_quote_the_parser_gives_up_on_still_counts_every_record(settings, real_rows):
    path = land_csv(settings, "interactions-eof.csv", real_rows.head(10))
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ',"United Kingdom'  # open to the end of the file
    path.write_text("\n".join(lines) + "\n")
    (result,) = ingest(settings)
    assert result.status == "rejected" and result.rows_in == 10 == result.rows_quarantined
    assert_balanced(settings)


@needs_real_rows
def test_two_files_of_one_stem_and_a_file_landed_again_keep_their_own_outputs(settings, real_rows):
    first, second = real_rows.iloc[:500], real_rows.iloc[500:900]
    land_csv(settings, "interactions-a.csv", first)
    first.assign(event_time=first["event_time"]).to_parquet(settings.landing_dir / "interactions-a.parquet", index=False)
    results = ingest(settings)
    assert len({r.accepted_path for r in results}) == 2
    # The Parquet copy holds the same rows: quarantined as landed before, not trained on twice.
    csv, parquet = sorted(results, key=lambda r: r.file_name)
    assert csv.rows_accepted > 0 and parquet.rows_accepted == 0 and parquet.status == "quarantined"
    assert set(pd.read_parquet(parquet.quarantine_path)[REASON_COLUMN].str.split(";").explode()) >= {"duplicate_of_earlier_batch"}

    old_quarantine = pd.read_parquet(csv.quarantine_path)
    land_csv(settings, "interactions-a.csv", second)  # corrected and landed again under the same name
    (again,) = ingest(settings)
    assert again.batch_id != csv.batch_id and again.accepted_path != csv.accepted_path
    pd.testing.assert_frame_equal(pd.read_parquet(csv.quarantine_path), old_quarantine)  # nothing overwritten
    assert_balanced(settings)


@needs_real_rows
def test_overlapping_daily_exports_are_accepted_once(settings, real_rows):
    times = pd.to_datetime(real_rows["event_time"], utc=True)
    days = sorted(times.dt.date.unique())
    assert len(days) >= 3
    monday = real_rows[times.dt.date.isin(days[:2])]
    tuesday = real_rows[times.dt.date.isin(days[1:3])]  # overlaps the first export by a whole day
    land_csv(settings, "interactions-export-1.csv", monday)
    (first,) = ingest(settings)
    land_csv(settings, "interactions-export-2.csv", tuesday)
    (second,) = ingest(settings)
    overlap = real_rows[times.dt.date == days[1]]
    accepted_overlap = pd.read_parquet(first.accepted_path)
    accepted_overlap = accepted_overlap[accepted_overlap["event_time"].dt.date == days[1]]
    duplicates = pd.read_parquet(second.quarantine_path)
    flagged = duplicates[duplicates[REASON_COLUMN].str.contains("duplicate_of_earlier_batch")]
    # Every overlapping row the first export accepted (a row the export repeats, every copy).
    key = ["user_id", "item_id", "order_id", "quantity", "price", "event_time"]
    assert len(flagged.drop_duplicates(key)) == len(accepted_overlap) > 0
    assert len(flagged) <= len(overlap)
    accepted_second = pd.read_parquet(second.accepted_path)
    assert not (accepted_second["event_time"].dt.date == days[1]).any()
    rule = next(r for r in second.rule_table if r["expectation"] == "duplicate_of_earlier_batch")
    assert rule["level"] == "policy" and rule["rows_failed"] == len(flagged)
    assert_balanced(settings)


@needs_real_rows
def test_the_duplicate_index_reads_only_the_window(settings, real_rows):
    times = pd.to_datetime(real_rows["event_time"], utc=True)
    first_day = real_rows[times.dt.date == times.dt.date.min()]
    land_csv(settings, "interactions-day1.csv", first_day)
    ingest(settings)
    later = first_day.assign(event_time=(times[first_day.index] + pd.Timedelta(days=40)).dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    land_csv(settings, "interactions-40-days-later.csv", later)
    ingest(settings)
    # Day 1 is now more than 35 days behind the newest event: its rows are no longer looked up.
    land_csv(settings, "interactions-day1-again.csv", first_day.iloc[::-1])  # other bytes, the same rows
    (again,) = ingest(settings)
    assert "duplicate_of_earlier_batch" not in {r["expectation"] for r in again.rule_table if r["rows_failed"]}
    settings.duplicate_window_days = 60
    land_csv(settings, "interactions-day1-once-more.csv", first_day.sample(frac=1, random_state=0))
    (once_more,) = ingest(settings)
    assert once_more.rows_accepted == 0 and once_more.status == "quarantined"


@needs_real_rows
def test_a_file_still_being_written_is_left_until_it_settles(settings, real_rows):
    settings.landing_settle_seconds = 1.0
    path = land_csv(settings, "interactions-copying.csv", real_rows.head(100))
    assert find_new_files(settings) == []  # just written
    assert records(settings) == []
    time.sleep(1.1)
    (landed,) = find_new_files(settings)
    assert landed.file_name == path.name


@needs_real_rows
def test_a_file_that_changes_after_it_was_registered_is_not_validated_as_registered(settings, real_rows):
    path = land_csv(settings, "interactions-growing.csv", real_rows.head(100))
    (landed,) = find_new_files(settings)
    land_csv(settings, path.name, real_rows.head(200))  # the copy went on after registration
    result = validate_file(landed, settings)
    assert result.status == "ignored" and "changed after it was registered" in result.reasons[0]
    (again,) = ingest(settings)  # its final content is a batch of its own
    assert again.rows_in == 200 and again.batch_id != landed.batch_id
    land_csv(settings, path.name, real_rows.head(100))  # and the first content, landed again, is read at last
    (first,) = ingest(settings)
    assert first.batch_id == landed.batch_id and first.rows_in == 100 and first.status != "ignored"
    assert_balanced(settings)


@needs_real_rows
def test_every_entry_of_landing_is_processed_or_recorded_as_ignored(settings, real_rows, tmp_path):
    rows = real_rows.head(50)
    land_csv(settings, "orders-2011-07.csv", rows)
    land_csv(settings, "INTERACTIONS-UPPER.CSV", rows)
    (settings.landing_dir / "archive").mkdir()
    rows.to_csv(settings.landing_dir / "archive" / "interactions-old.csv", index=False)
    outside = tmp_path / "outside.csv"
    rows.to_csv(outside, index=False)
    (settings.landing_dir / "interactions-link.csv").symlink_to(outside)
    (settings.landing_dir / "linked-folder").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(settings.landing_dir / "interactions-pipe.csv")
    (settings.landing_dir / "interactions-x.csv.part").write_text("copy in progress")

    found = {f.file_name: f for f in find_new_files(settings)}
    assert found["INTERACTIONS-UPPER.CSV"].kind == "interactions"
    reasons = {name: f.reason for name, f in found.items() if f.kind == "ignored"}
    assert set(reasons) == {"orders-2011-07.csv", "archive/interactions-old.csv", "interactions-link.csv", "linked-folder", "interactions-pipe.csv"}
    assert "the name does not say" in reasons["orders-2011-07.csv"]
    assert "subfolder" in reasons["archive/interactions-old.csv"]
    assert "symbolic link" in reasons["interactions-link.csv"] and "symbolic link" in reasons["linked-folder"]
    assert "not a regular file" in reasons["interactions-pipe.csv"]
    upper = validate_file(found["INTERACTIONS-UPPER.CSV"], settings)
    assert upper.rows_in == 50 and upper.status != "ignored"
    assert find_new_files(settings) == []  # each recorded once
    statuses = {r.file_name: r.status for r in records(settings)}
    assert statuses["orders-2011-07.csv"] == "ignored" and "interactions-x.csv.part" not in statuses


@needs_real_rows
def test_an_unreadable_file_is_recorded_and_the_others_go_on(real_rows):
    home = Path(tempfile.mkdtemp(dir="/tmp"))  # outside pytest's root-only folders
    try:
        settings = Settings(home=home, landing_settle_seconds=0)
        settings.landing_dir.mkdir(parents=True)
        real_rows.head(20).to_csv(settings.landing_dir / "interactions-ok.csv", index=False)
        real_rows.head(30).to_csv(settings.landing_dir / "interactions-locked.csv", index=False)
        os.chmod(settings.landing_dir / "interactions-locked.csv", 0)
        ledger.connect(settings.ledger_url)  # created (and its driver loaded) before dropping privileges
        for path in (home, *home.rglob("*")):
            os.chown(path, 65534, 65534)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # root reads any file: the child runs as user nobody, for whom mode 000 holds
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                found = find_new_files(settings)
                os.write(write, repr(sorted((f.file_name, f.kind, f.reason.split(":")[0]) for f in found)).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(child, 0)
        with os.fdopen(read) as answer:
            assert answer.read() == repr(sorted([("interactions-locked.csv", "ignored", "cannot be read"), ("interactions-ok.csv", "interactions", "")]))
    finally:
        shutil.rmtree(home, ignore_errors=True)


@needs_real_rows
def test_times_without_an_offset_are_utc_and_the_batch_says_so(settings, real_rows):
    rows = real_rows.head(40).copy()
    stamps = pd.to_datetime(rows["event_time"], utc=True)
    # The producer's clock: half the rows with a Paris offset, half naive UTC.
    rows["event_time"] = [
        (s.tz_convert("Europe/Paris").isoformat() if i % 2 else s.strftime("%Y-%m-%d %H:%M:%S")) for i, s in enumerate(stamps)
    ]
    land_csv(settings, "interactions-mixed-times.csv", rows)
    (result,) = ingest(settings)
    assert "20 event_time value(s) carry no UTC offset: read as UTC" in result.reasons
    accepted = pd.read_parquet(result.accepted_path)
    assert set(accepted["event_time"]) <= set(stamps)  # every time is the instant it names, offset or not


@needs_real_rows
def test_parquet_ids_stored_as_numbers_and_naive_times(settings, real_rows):
    rows = real_rows.dropna(subset=["user_id"]).head(60).copy()
    rows["user_id"] = rows["user_id"].astype(float)  # 17850.0, as a careless export writes it
    rows["event_time"] = pd.to_datetime(rows["event_time"], utc=True).dt.tz_localize(None)
    rows["quantity"], rows["price"] = rows["quantity"].astype(int), rows["price"].astype(float)
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(settings.landing_dir / "interactions-typed.parquet", index=False)
    (result,) = ingest(settings)
    assert any("user_id is a float column" in r for r in result.reasons)
    assert any("event_time has no time zone: read as UTC" in r for r in result.reasons)
    accepted = pd.read_parquet(result.accepted_path)
    assert not accepted["user_id"].str.endswith(".0").any() and accepted["user_id"].str.fullmatch(r"\d+").all()


@needs_real_rows
def test_spoiled_values_are_errors_or_missing_not_real_rows(settings, real_rows):
    rows = real_rows.dropna(subset=["user_id"]).head(100).copy().reset_index(drop=True)
    rows.loc[0:2, "quantity"] = ["inf", "1e30", str(2**63)]  # wrapped to a negative: a 'cancellation'
    rows.loc[3:6, "user_id"] = ["NULL", "None", "nan", "NA"]
    path = land_csv(settings, "interactions-spoiled.csv", rows)
    data = bytearray(path.read_bytes())
    at = data.index(rows.loc[7, "order_id"].encode()) + 1
    data[at:at] = b"\xff"  # one invalid byte in one order id
    path.write_bytes(bytes(data))
    (result,) = ingest(settings)
    failed = {r["expectation"]: r["rows_failed"] for r in result.rule_table}
    assert failed["quantity_present"] == 3 and failed["cancellation"] == 0
    assert failed["anonymous_user"] >= 4 and failed["text_encoding"] == 1  # one bad byte spoils its own row only
    accepted = pd.read_parquet(result.accepted_path)
    assert not accepted["user_id"].isin(["NULL", "None", "nan", "NA"]).any()
    assert not accepted["order_id"].str.contains("\ufffd").any()
    assert_balanced(settings)
