"""Validation in pieces (settings.validation_chunk_rows, data_checks/chunked.py): a large file
streamed from disk and checked a piece at a time gives what validating it in one piece gives.

Risks guarded: a cross-row rule (one user per order, exact repeats, the order's size) missed
because an order's lines, far apart in the file, went to different pieces; rows reordered, lost
or counted twice when the pieces are merged; a batch-level verdict (wrong column type, too many
errors) reached on one piece's counts instead of the batch's; bytes the encoding cannot decode,
or a line break inside a value, read differently when streamed; Parquet ids or notes read per
piece; a row of an earlier batch missed; spill files left behind in the home.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import pandas as pd
import pytest

from data_checks import chunked
from data_checks.chunked import LandingStream, RecordCounter
from data_checks.contract import REASON_COLUMN
from data_checks.landing import count_records, decode
from data_checks.sources.synthetic import BatchOptions, SyntheticShop
from models.settings import Settings
from tasks import ledger
from tasks.ingest import fingerprints_path, find_new_files, validate_file
from tests.conftest import TINY_SHOP, TINY_SHOP_SETTINGS
from tests.data.test_interactions_suite import event_stream

CHUNK_ROWS = 1_000  # the smallest the setting allows: a TINY_SHOP week (about 2.5k rows) is 3 pieces


def week(number: int = 3, **options) -> pd.DataFrame:
    return SyntheticShop(0, TINY_SHOP).week(number, BatchOptions(**options))


def as_csv(frame: pd.DataFrame) -> Callable[[Path], None]:
    return lambda path: frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")


def homes(tmp_path: Path) -> dict[str, Settings]:
    base = {**TINY_SHOP_SETTINGS, "earliest_event_time": "2000-01-01"}
    return {
        "whole": Settings(home=tmp_path / "whole", **base),
        "pieces": Settings(home=tmp_path / "pieces", validation_chunk_rows=CHUNK_ROWS, **base),
    }


def land_and_validate(settings: Settings, files: list[tuple[str, Callable[[Path], None]]]):
    """Each file landed and validated in turn (so a later one sees the earlier ones' rows)."""
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, write in files:
        write(settings.landing_dir / name)
        results += [validate_file(f, settings) for f in find_new_files(settings)]
    return results


def ge_counts(report_path: str) -> dict[str, int]:
    """Great Expectations' failing rows per rule, summed over the pieces a report holds."""
    result = json.loads(Path(report_path).with_suffix("").with_suffix(".validation.json").read_text())
    counts: dict[str, int] = {}
    for part in result.get("partitions", [result]):
        for item in part["results"]:
            rule = item["expectation_config"]["meta"]["rule"]
            counts[rule] = counts.get(rule, 0) + int(item["result"].get("unexpected_count") or 0)
    return counts


def outputs(settings: Settings, record: ledger.BatchRecord) -> dict[str, object]:
    found: dict[str, object] = {}
    for kind, path in (("accepted", record.accepted_path), ("quarantine", record.quarantine_path)):
        found[kind] = None if path is None else (Path(path).relative_to(settings.home).as_posix(), pd.read_parquet(path))
    found["fingerprints"] = np.load(fingerprints_path(record.accepted_path)) if record.accepted_path else None
    found["report"] = Path(record.report_path).read_text()
    return found


def assert_same_outcome(tmp_path: Path, files: list[tuple[str, Callable[[Path], None]]], in_pieces: bool = True):
    """Validated in one piece and in pieces, every file has the same ledger record, outputs
    (row for row, in order), rule counts and report; returns the records of the pieces' home.
    ``in_pieces``: whether the pieces' home validates every file in pieces (else all in one)."""
    settings = homes(tmp_path)
    results = {"whole": land_and_validate(settings["whole"], files)}
    with mock.patch.object(chunked, "validate_pieces", wraps=chunked.validate_pieces) as spy:
        results["pieces"] = land_and_validate(settings["pieces"], files)
    spilled = [call.args[0] for call in spy.call_args_list]
    assert len(spilled) == (len(files) if in_pieces else 0)
    assert all(len(s.pieces) >= 2 and sum(p.rows for p in s.pieces) == s.rows for s in spilled)
    records = {name: ledger.all_batches(ledger.connect(home.ledger_url)) for name, home in settings.items()}
    assert len(records["whole"]) == len(records["pieces"]) == len(files)
    for whole, piecewise in zip(records["whole"], records["pieces"]):
        assert (whole.status, whole.rows_in, whole.rows_accepted, whole.rows_quarantined, whole.reasons) == (
            piecewise.status, piecewise.rows_in, piecewise.rows_accepted, piecewise.rows_quarantined, piecewise.reasons)
        assert (whole.min_event_time, whole.max_event_time) == (piecewise.min_event_time, piecewise.max_event_time)
        assert whole.rows_in == whole.rows_accepted + whole.rows_quarantined
        one, many = outputs(settings["whole"], whole), outputs(settings["pieces"], piecewise)
        for kind in ("accepted", "quarantine"):
            assert (one[kind] is None) == (many[kind] is None), kind
            if one[kind] is not None:
                assert one[kind][0] == many[kind][0]  # the same name in the home
                pd.testing.assert_frame_equal(many[kind][1], one[kind][1])
        assert (one["fingerprints"] is None) == (many["fingerprints"] is None)
        if one["fingerprints"] is not None:
            np.testing.assert_array_equal(one["fingerprints"], many["fingerprints"])
        assert one["report"] == many["report"]  # the summary: status, counts, notes, rule table
        if whole.status != "rejected" or "errors" in whole.reasons:
            assert ge_counts(whole.report_path) == ge_counts(piecewise.report_path)
    assert [r.rule_table for r in results["whole"]] == [r.rule_table for r in results["pieces"]]
    assert list((settings["pieces"].home / "tmp").iterdir()) == []
    return records["pieces"]


def test_a_synthetic_week_with_bad_rows_and_cross_row_problems(tmp_path):
    frame = week(bad_row_share=0.1)
    # An order naming two users, and exact repeats of a line, at the two ends of the file.
    frame.loc[5, "order_id"] = frame.loc[len(frame) - 3, "order_id"]
    frame.loc[5, "user_id"] = "someone-else"
    frame = pd.concat([frame, frame.iloc[[10, 11, 11]]], ignore_index=True)
    (record,) = assert_same_outcome(tmp_path, [("interactions-week.csv", as_csv(frame))])
    assert record.status == "partially_accepted"
    assert {"order_single_user", "exact_duplicate"} <= set(record.reasons.replace(";", " ").split())


def test_an_order_whose_lines_lie_far_apart_is_checked_whole(tmp_path):
    frame = week()
    first, last = frame.index[0], frame.index[-1]
    frame.loc[last, ["order_id", "user_id"]] = [frame.loc[first, "order_id"], "another-user"]  # first and last rows
    (record,) = assert_same_outcome(tmp_path, [("interactions-apart.csv", as_csv(frame))])
    lines = frame["order_id"].eq(frame.loc[first, "order_id"]).sum()
    assert f"{lines} rows: order_single_user" in record.reasons  # every line of the order, first to last


def test_invalid_utf8_bytes_are_read_as_in_one_piece(tmp_path):
    def write(path: Path) -> None:
        as_csv(week())(path)
        data = bytearray(path.read_bytes())
        for at in (200, len(data) // 2, len(data) - 40):  # one in each piece's stretch of the file
            data[at:at] = b"\xff\xc3"
        path.write_bytes(b"\xef\xbb\xbf" + bytes(data))  # and a byte order mark

    (record,) = assert_same_outcome(tmp_path, [("interactions-bytes.csv", write)])
    assert "byte sequence(s) not valid utf-8" in record.reasons and "rows: text_encoding" in record.reasons


def test_a_line_break_inside_a_value_rejects_the_file_whole(tmp_path):
    def write(path: Path) -> None:
        as_csv(week())(path)
        lines = path.read_text().splitlines()
        lines[1500] = lines[1500].rsplit(",", 1)[0] + ',"United\nKingdom"'
        path.write_text("\n".join(lines) + "\n")

    (record,) = assert_same_outcome(tmp_path, [("interactions-break.csv", write)], in_pieces=False)
    assert record.status == "rejected" and "records but parses as" in record.reasons


def test_too_many_errors_reject_the_batch_whole(tmp_path):
    frame = week()
    frame.loc[frame.index[::3], "item_id"] = None  # a third of the rows, spread over every piece
    (record,) = assert_same_outcome(tmp_path, [("interactions-broken.csv", as_csv(frame))])
    assert record.status == "rejected" and record.rows_quarantined == len(frame) and "the producer looks broken" in record.reasons


def test_a_wrong_column_type_is_decided_on_the_whole_batch(tmp_path):
    frame = week()
    frame["price"] = frame["price"].astype("string")
    frame.loc[frame.index[len(frame) // 3:], "price"] = "n/a"  # two thirds: only the batch's counts show it
    (record,) = assert_same_outcome(tmp_path, [("interactions-typed.csv", as_csv(frame))])
    assert record.status == "rejected" and "column price is not numeric" in record.reasons


def test_a_parquet_file_with_float_ids_and_naive_times(tmp_path):
    frame = week()
    frame["user_id"] = frame["user_id"].str.extract(r"(\d+)")[0].astype(float)
    frame["event_time"] = frame["event_time"].dt.tz_localize(None)
    frame.loc[frame.index[-1], "user_id"] = 0.5  # one fraction, in the last piece: no id is rewritten

    def write(path: Path) -> None:
        frame.to_parquet(path, index=False, row_group_size=700)

    (record,) = assert_same_outcome(tmp_path, [("interactions-typed.parquet", write)])
    assert "event_time has no time zone: read as UTC" in record.reasons and "float column" not in record.reasons


def test_rows_of_an_earlier_batch_are_quarantined_as_duplicates(tmp_path):
    first, second = week(3), week(4)
    overlap = pd.concat([first.iloc[-800:], second], ignore_index=True)  # yesterday's export again
    records = assert_same_outcome(tmp_path, [("interactions-1.csv", as_csv(first)), ("interactions-2.csv", as_csv(overlap))])
    assert "rows: duplicate_of_earlier_batch" in records[1].reasons


def test_an_event_stream_without_orders(tmp_path):
    stream = pd.concat([event_stream(2_401), event_stream(2_401).iloc[:30]], ignore_index=True)  # exact repeats, far apart
    stream.loc[100, "event_type"] = "wishlist"
    (record,) = assert_same_outcome(tmp_path, [("interactions-stream.csv", as_csv(stream))])
    assert "30 rows: exact_duplicate" in record.reasons and "rows: event_type_known" in record.reasons


def test_a_small_file_takes_the_one_piece_path(tmp_path):
    settings = homes(tmp_path)["pieces"]
    land_and_validate(settings, [("interactions-small.csv", as_csv(week().head(900)))])
    (record,) = ledger.all_batches(ledger.connect(settings.ledger_url))
    report = json.loads(Path(record.report_path).with_suffix("").with_suffix(".validation.json").read_text())
    assert "partitions" not in report and not (settings.home / "tmp").exists()


@pytest.mark.parametrize("block", [1, 2, 3, 7, 4096])
def test_the_stream_decodes_and_counts_as_the_whole_bytes_do(block):
    data = "\ufeffa,b\r\n1,\u00e9\r\n\r\n  \n2,x\r3,\ufffd\n".encode() + b"4,\xff\xe2\x82\n5,z"

    class Blocks:  # a file that hands out at most `block` bytes a read
        def __init__(self) -> None:
            self.at = 0

        def read(self, size: int = -1) -> bytes:
            piece = data[self.at:self.at + block]
            self.at += len(piece)
            return piece

    stream, text = LandingStream(Blocks(), "utf-8"), []
    while chunk := stream.read(5):
        text.append(chunk)
    whole, notes = decode(data, "utf-8")
    assert "".join(text) == whole and stream.replaced == whole.count("\ufffd") == 3 and notes
    assert stream.counter.records == count_records(data, False) == 5
    counter = RecordCounter()
    for at in range(0, len(data), block):
        counter.feed(data[at:at + block])
    counter.feed(b"")
    assert counter.records == 5
