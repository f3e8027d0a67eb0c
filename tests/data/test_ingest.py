"""Landing -> accepted/quarantine through the ledger. Risks guarded: a file trained on twice, a
crash losing a batch, an unreadable file vanishing, rows unaccounted for."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import sqlalchemy

from data_checks.contract import REASON_COLUMN
from data_checks.sources.synthetic import SyntheticShop, write_weeks
from tasks import ledger
from tasks.ingest import find_new_files, load_catalog, validate_file
from tests.conftest import TINY_SHOP, race


def ingest_all(settings):
    return [validate_file(f, settings) for f in find_new_files(settings)]


def test_files_are_processed_once_and_copies_are_duplicates(settings):
    write_weeks(settings.landing_dir, range(0, 2), bad_rows_weeks=(1,), config=TINY_SHOP)
    results = ingest_all(settings)
    assert [r.file_name for r in results] == ["catalog-week000.csv", "interactions-week000.csv", "interactions-week001.csv"]
    assert [r.status for r in results] == ["accepted", "accepted", "partially_accepted"]

    shutil.copy(settings.landing_dir / "interactions-week000.csv", settings.landing_dir / "interactions-copy.csv")
    assert ingest_all(settings) == []  # nothing new: the copy is recorded, not processed
    assert find_new_files(settings) == []
    rows = ledger.all_batches(ledger.connect(settings.ledger_url))
    duplicate = [r for r in rows if r.status == "duplicate"]
    assert len(duplicate) == 1 and duplicate[0].file_name == "interactions-copy.csv"
    assert "interactions-week000.csv" in duplicate[0].reasons
    for row in rows:
        assert row.rows_in == row.rows_accepted + row.rows_quarantined


def test_accepted_and_quarantined_files_hold_every_row(settings):
    write_weeks(settings.landing_dir, range(1, 2), bad_rows_weeks=(1,), config=TINY_SHOP)
    (result,) = [r for r in ingest_all(settings) if r.file_name.startswith("interactions")]
    accepted = pd.read_parquet(result.accepted_path)
    quarantined = pd.read_parquet(result.quarantine_path)
    landed = pd.read_csv(settings.landing_dir / "interactions-week001.csv")
    assert len(accepted) + len(quarantined) == len(landed) == result.rows_in
    assert quarantined[REASON_COLUMN].str.len().gt(0).all()
    assert len(load_catalog(settings)) == TINY_SHOP.n_items


def test_an_unreadable_file_is_kept_in_quarantine_with_its_reason(settings):
    settings.landing_dir.mkdir(parents=True)
    (settings.landing_dir / "interactions-garbage.parquet").write_bytes(b"not parquet at all")
    (result,) = ingest_all(settings)
    assert result.status == "rejected"
    assert "unreadable file" in result.reasons[0]
    kept = settings.quarantine_dir / "000001-interactions-garbage.parquet"
    assert kept.read_bytes() == b"not parquet at all" and result.quarantine_path == str(kept)
    assert "unreadable" in (settings.quarantine_dir / "000001-interactions-garbage.parquet.reason.txt").read_text()


def test_a_batch_left_unfinished_by_a_crash_is_processed_again(settings):
    write_weeks(settings.landing_dir, range(0, 1), config=TINY_SHOP)
    first = find_new_files(settings)  # registered, then the process "dies" before validating
    again = find_new_files(settings)
    assert [f.batch_id for f in again] == [f.batch_id for f in first]


def _find_at_barrier(barrier, results, settings) -> None:
    barrier.wait()
    results.put([f.file_name for f in find_new_files(settings)])


def test_two_runs_finding_the_same_files_at_once_register_each_file_once(settings):
    write_weeks(settings.landing_dir, range(0, 4), config=TINY_SHOP)
    ledger.connect(settings.ledger_url)  # the tables exist, as they do once a home has run
    found = race(_find_at_barrier, [(settings,), (settings,)], timeout=120)
    rows = ledger.all_batches(ledger.connect(settings.ledger_url))
    names = sorted(p.name for p in settings.landing_dir.iterdir())
    assert sorted(r.file_name for r in rows) == names  # one record per file, whoever registered it
    assert set(found[0]) | set(found[1]) == set(names)


def test_a_batch_is_decided_by_one_run_only(settings):
    write_weeks(settings.landing_dir, range(0, 1), config=TINY_SHOP)
    (batch,) = [v for v in ingest_all(settings) if v.kind == "interactions"]
    engine = ledger.connect(settings.ledger_url)
    assert ledger.record_decision(engine, batch.batch_id, "update")
    assert not ledger.record_decision(engine, batch.batch_id, "skip")  # a second run lost the claim
    (record,) = [r for r in ledger.all_batches(engine) if r.id == batch.batch_id]
    assert record.decision == "update"
    assert ledger.record_received(engine, batch.file_name, record.sha256, 1, "interactions") is None


def test_an_empty_file_is_rejected_and_kept(settings):
    settings.landing_dir.mkdir(parents=True)
    (settings.landing_dir / "interactions-empty.csv").write_bytes(b"")
    (result,) = ingest_all(settings)
    assert result.status == "rejected" and "the file is empty" in result.reasons[0]
    assert (settings.quarantine_dir / "000001-interactions-empty.csv").exists()


def test_a_truncated_parquet_file_is_rejected_and_kept_as_it_came(settings, tmp_path):
    whole = tmp_path / "whole.parquet"
    SyntheticShop(0, TINY_SHOP).week(0).to_parquet(whole)
    settings.landing_dir.mkdir(parents=True)
    truncated = whole.read_bytes()[: whole.stat().st_size // 2]
    (settings.landing_dir / "interactions-cut.parquet").write_bytes(truncated)
    (result,) = ingest_all(settings)
    assert result.status == "rejected" and result.reasons[0].startswith("unreadable file")
    assert (settings.quarantine_dir / "000001-interactions-cut.parquet").read_bytes() == truncated


def test_a_latin1_csv_with_an_odd_name_is_read_in_the_encoding_the_settings_name(settings):
    frame = SyntheticShop(0, TINY_SHOP).week(0).head(50).copy()
    frame["country"] = "Côte d'Ivoire"
    settings.landing_dir.mkdir(parents=True)
    name = "interactions semaine été №1.csv"
    frame.to_csv(settings.landing_dir / name, index=False, encoding="latin-1", errors="replace", date_format="%Y-%m-%dT%H:%M:%SZ")
    settings.landing_encoding = "latin-1"
    (result,) = ingest_all(settings)
    assert result.file_name == name and result.status == "accepted" and result.reasons == []
    accepted = pd.read_parquet(result.accepted_path)
    assert set(accepted["country"]) == {"Côte d'Ivoire"}
    assert Path(result.report_path).name == "000001-interactions semaine été №1.validation.md"
    row = ledger.all_batches(ledger.connect(settings.ledger_url))[0]
    assert row.report_path == result.report_path


def test_reports_hold_ge_result_and_a_readable_summary(settings):
    write_weeks(settings.landing_dir, range(1, 2), bad_rows_weeks=(1,), config=TINY_SHOP)
    (result,) = [r for r in ingest_all(settings) if r.file_name.startswith("interactions")]
    summary = Path(result.report_path).read_text()
    assert "| expectation | level | rows failed | share | meaning |" in summary
    assert "| event_time_in_window | error |" in summary
    ge = json.loads(Path(result.report_path).with_suffix(".json").read_text())
    assert ge["success"] is False and len(ge["results"]) == len(result.rule_table)
    assert {row["expectation"] for row in result.rule_table} >= {"anonymous_user", "cancellation"}


def test_other_files_in_landing_are_recorded_once_as_ignored_and_copies_in_progress_left_alone(settings):
    settings.landing_dir.mkdir(parents=True)
    (settings.landing_dir / "notes.txt").write_text("hello")
    (settings.landing_dir / "interactions-week000.csv.tmp").write_text("half written")
    (settings.landing_dir / ".interactions-week000.csv.x1Y2z3").write_text("rsync writing")
    (ignored,) = find_new_files(settings)
    assert ignored.file_name == "notes.txt" and ignored.kind == "ignored" and "the name does not say" in ignored.reason
    assert find_new_files(settings) == []  # recorded once
    (row,) = ledger.all_batches(ledger.connect(settings.ledger_url))
    assert row.status == "ignored" and row.rows_in == 0


def test_a_ledger_from_before_the_file_index_gets_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    old = ledger.batches.to_metadata(sqlalchemy.MetaData())
    old.indexes.clear()  # the table as versions before the index created it
    old.create(sqlalchemy.create_engine(url))
    engine = ledger.connect(url)
    assert "one_record_per_file" in {index["name"] for index in sqlalchemy.inspect(engine).get_indexes("batches")}
    assert ledger.record_received(engine, "interactions-a.csv", "0" * 64, 1, "interactions") == 1
    assert ledger.record_received(engine, "interactions-a.csv", "0" * 64, 1, "interactions") is None


def _merge_catalogs_at_barrier(barrier, results, settings, prefix: str) -> None:
    from tasks.ingest import _merge_catalog

    items = pd.DataFrame({"item_id": [f"{prefix}{i}" for i in range(40)], "title": "a title", "category": pd.NA, "price": 1.0})
    barrier.wait()
    for start in range(0, 40, 4):  # ten merges each, interleaving with the other process's
        _merge_catalog(items.iloc[start : start + 4], settings)
    results.put(prefix)


def test_two_runs_merging_the_catalog_at_once_keep_both_runs_items(settings):
    race(_merge_catalogs_at_barrier, [(settings, "a"), (settings, "b")], timeout=120)
    merged = load_catalog(settings)
    assert sorted(merged["item_id"]) == sorted([f"a{i}" for i in range(40)] + [f"b{i}" for i in range(40)])


def _validate_at_barrier(barrier, results, settings, landed) -> None:
    barrier.wait()
    result = validate_file(landed, settings)
    results.put((result.status, result.rows_accepted))


def test_two_runs_validating_one_received_batch_at_once_record_it_once(settings):
    """A batch left `received` is validated again by the next run, which may be working at the
    same moment as the run that registered it: the second must not read the first's accepted
    rows as duplicates of its own batch."""
    write_weeks(settings.landing_dir, range(0, 1), config=TINY_SHOP)
    (landed,) = [f for f in find_new_files(settings) if f.kind == "interactions"]
    outcomes = race(_validate_at_barrier, [(settings, landed), (settings, landed)], timeout=180)
    (record,) = [r for r in ledger.all_batches(ledger.connect(settings.ledger_url)) if r.id == landed.batch_id]
    assert record.status == "accepted" and record.rows_accepted == record.rows_in > 0
    assert outcomes == [("accepted", record.rows_accepted)] * 2


# --- landing files already hashed are not read again ----------------------------------------------

import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from tasks import ingest  # noqa: E402


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the landing files hashed, in order."""
    names: list[str] = []
    real = ingest.sha256_of

    def counting(path: Path) -> str:
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(ingest, "sha256_of", counting)
    return names


@pytest.fixture
def files_aged(monkeypatch) -> None:
    """As if the landing files were written long before each run (a test cannot set ctime back)."""
    monkeypatch.setattr(ingest, "HASH_CACHE_MIN_AGE_SECONDS", 0.0)


def test_a_second_run_does_not_read_files_it_hashed_before(settings, hashed, files_aged):
    # Risk: every run reading every landing file in full, so an update costs O(all data).
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    ingest_all(settings)
    assert sorted(hashed) == sorted(p.name for p in settings.landing_dir.iterdir())
    hashed.clear()
    assert find_new_files(settings) == [] and hashed == []
    (settings.landing_dir / "interactions-week000.csv").unlink()
    assert find_new_files(settings) == [] and hashed == []
    cached = json.loads((settings.home / ingest.LANDING_HASHES).read_text())["files"]
    assert sorted(cached) == sorted(p.name for p in settings.landing_dir.iterdir())  # a file gone drops out


def test_a_rewrite_that_keeps_size_and_mtime_is_hashed_again_and_is_a_new_batch(settings, hashed, files_aged):
    # Risk: a producer rewriting a file in place (same size, times preserved, e.g. rsync -t or
    # cp -p) and the cached digest hiding the new content for good.
    write_weeks(settings.landing_dir, range(0, 1), config=TINY_SHOP)
    ingest_all(settings)
    path = settings.landing_dir / "interactions-week000.csv"
    before = path.stat()
    header, *lines = path.read_bytes().splitlines(keepends=True)
    time.sleep(0.05)  # past the file system's timestamp tick
    path.write_bytes(header + b"".join(reversed(lines)))  # the same rows in another order: same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns) and after.st_ctime_ns != before.st_ctime_ns
    hashed.clear()
    (landed,) = find_new_files(settings)
    assert hashed == [path.name]  # the other files are not read again
    assert landed.file_name == path.name and landed.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    records = [r for r in ledger.all_batches(ledger.connect(settings.ledger_url)) if r.file_name == path.name]
    assert len(records) == 2 and landed.batch_id == max(r.id for r in records)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00",
        b'{"files": []}',
        b'["files"]',
        b'{"files": {"interactions-week000.csv": {"stat": [1, 2, 3, "4"], "sha256": "' + b"0" * 64 + b'"}}}',
        b'{"files": {"interactions-week000.csv": {"stat": [1, 2, 3, 4], "sha256": "not a digest"}}}',
    ],
)
def test_a_corrupt_hash_cache_is_ignored_and_written_again(settings, hashed, files_aged, caplog, content):
    # Risk: a cache torn by a full disk or a hand edit failing every run, or being trusted.
    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    ingest_all(settings)
    records = ledger.all_batches(ledger.connect(settings.ledger_url))
    cache_path = settings.home / ingest.LANDING_HASHES
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_bytes(content)
    hashed.clear()
    with caplog.at_level(logging.WARNING, logger="tasks.ingest"):
        assert find_new_files(settings) == []
    assert "cannot be used" in caplog.text
    assert sorted(hashed) == sorted(p.name for p in settings.landing_dir.iterdir())  # all hashed again, nothing else changed
    assert ledger.all_batches(ledger.connect(settings.ledger_url)) == records
    hashed.clear()
    assert find_new_files(settings) == [] and hashed == []  # the cache was written again, whole


def test_a_file_changed_moments_before_the_run_is_hashed_again_by_the_next(settings, hashed):
    # Risk: a write in the same timestamp tick as the hashing leaving the stat unchanged, and the
    # cached digest hiding it (the cache keeps only files older than HASH_CACHE_MIN_AGE_SECONDS).
    write_weeks(settings.landing_dir, range(0, 1), config=TINY_SHOP)
    find_new_files(settings)
    hashed.clear()
    find_new_files(settings)
    assert sorted(hashed) == sorted(p.name for p in settings.landing_dir.iterdir())
