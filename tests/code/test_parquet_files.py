"""Every Parquet file of freshrec is opened by Arrow itself (models.files): a Python file object
handed to Arrow can leave one of Arrow's threads alive past the interpreter's shutdown, and the
process aborts after its work is done (benchmarks/parquet_exit.py counts how often)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.files import read_parquet, write_parquet

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("flows", "tasks", "models", "data_checks")


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.array(["u1", None, "u3"], dtype="string"),
            "item_id": ["a", "b", "c"],
            "price": [1.5, np.nan, 3.0],
            "event_time": pd.to_datetime(["2026-01-01", "2026-01-02", None], utc=True),
            "category": pd.Categorical(["x", "y", "x"]),
        }
    )


def test_a_frame_written_and_read_back_is_the_frame_pandas_gives(tmp_path):
    frame = _frame()
    write_parquet(frame, tmp_path / "ours.parquet")
    frame.to_parquet(tmp_path / "pandas.parquet", index=False)
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "ours.parquet"), pd.read_parquet(tmp_path / "pandas.parquet"))
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "ours.parquet"), frame)
    pd.testing.assert_frame_equal(read_parquet(str(tmp_path / "ours.parquet"), columns=["item_id"]), frame[["item_id"]])
    assert read_parquet((tmp_path / "ours.parquet").read_bytes()).equals(frame)


def test_an_index_is_kept_only_when_asked(tmp_path):
    counts = pd.Series([3, 1], index=pd.Index(["a", "b"], name="item_id"), name="count").to_frame()
    write_parquet(counts, tmp_path / "kept.parquet", index=None)
    write_parquet(counts, tmp_path / "dropped.parquet")
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "kept.parquet"), counts)
    assert list(read_parquet(tmp_path / "dropped.parquet").index) == [0, 1]


def test_a_relative_path_is_the_working_directorys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_parquet(_frame(), Path("relative.parquet"))
    assert (tmp_path / "relative.parquet").exists()
    assert len(read_parquet("relative.parquet")) == 3


def test_arrow_opens_the_file_itself(tmp_path, monkeypatch):
    """What reaches Arrow is a path or an Arrow buffer, never a Python file object."""
    sources = []
    real_read, real_write = pq.read_table, pq.write_table

    def read_table(source, *args, **kwargs):
        sources.append(source)
        return real_read(source, *args, **kwargs)

    def write_table(table, where, *args, **kwargs):
        sources.append(where)
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", read_table)
    monkeypatch.setattr(pq, "write_table", write_table)
    write_parquet(_frame(), tmp_path / "f.parquet")
    read_parquet(tmp_path / "f.parquet")
    read_parquet((tmp_path / "f.parquet").read_bytes())
    assert len(sources) == 3
    assert [type(s) for s in sources] == [str, str, pa.BufferReader]


def _parquet_calls_outside_files(path: Path, root: Path = ROOT) -> list[str]:
    """`pd.read_parquet(...)`, `<frame>.to_parquet(...)` and Arrow readers given `io.BytesIO`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        if name in ("read_parquet", "to_parquet") and not (isinstance(node.func.value, ast.Name) and node.func.value.id == "files"):
            found.append(f"{path.relative_to(root)}:{node.lineno} .{name}(...)")
        if name in ("read_table", "ParquetFile") and any("BytesIO" in ast.dump(arg) for arg in node.args):
            found.append(f"{path.relative_to(root)}:{node.lineno} {name}(io.BytesIO(...))")
    return found


def test_the_product_opens_parquet_only_through_models_files():
    found = [
        call
        for package in PRODUCT
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "models" / "files.py"
        for call in _parquet_calls_outside_files(path)
    ]
    assert not found, "open Parquet files with models.files.read_parquet / write_parquet:\n" + "\n".join(found)


@pytest.mark.parametrize("source", ["frame.to_parquet(path, index=False)", "pd.read_parquet(path)", "pq.ParquetFile(io.BytesIO(data))"])
def test_the_scan_finds_each_way_past_models_files(tmp_path, source):
    module = tmp_path / "module.py"
    module.write_text(f"def f(frame, path, data):\n    return {source}\n")
    assert len(_parquet_calls_outside_files(module, root=tmp_path)) == 1
