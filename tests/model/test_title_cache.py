"""The title cache and the file lock under it, with writers in separate processes. Risks guarded:
two runs updating the cache at once losing one run's titles, or pairing titles with vectors of
other titles for good; two writers interleaving a read-modify-write of one file."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import files, text
from tests.conftest import race

WRITERS, TITLES_EACH, INCREMENTS_EACH = 3, 50, 200


def _fake_encode(titles: list[str], batch_size: int = 256) -> np.ndarray:
    """A vector that is a function of the title alone, and takes a while, as the real encoder does:
    the cache is under test here, not MiniLM."""
    time.sleep(0.5)
    return np.stack([_vector_of(title) for title in titles]) if titles else np.zeros((0, text.TEXT_DIM), dtype=np.float32)


def _vector_of(title: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(title.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(text.TEXT_DIM).astype(np.float32)


def _add_titles(barrier, results, cache_dir: Path, titles: list[str]) -> None:
    text.encode = _fake_encode  # a process of its own: nothing to restore
    barrier.wait()
    text.TitleCache(cache_dir).vectors(pd.Series(titles, dtype="string"))
    results.put(len(titles))


def _count_under_lock(barrier, results, counter_path: Path, times: int) -> None:
    barrier.wait()
    for _ in range(times):
        with files.locked(counter_path):
            count = int(counter_path.read_text()) if counter_path.exists() else 0
            counter_path.write_text(str(count + 1))
    results.put(times)


def test_writers_updating_the_cache_at_once_keep_every_title_with_its_own_vector(tmp_path, monkeypatch):
    batches = [[f"writer {w} title {i}" for i in range(TITLES_EACH)] for w in range(WRITERS)]
    race(_add_titles, [(tmp_path, titles) for titles in batches], timeout=20)

    def no_encoding(titles: list[str], batch_size: int = 256) -> np.ndarray:
        raise AssertionError(f"titles lost from the cache: {titles[:3]}... ({len(titles)})")

    monkeypatch.setattr(text, "encode", no_encoding)
    every_title = [title for titles in batches for title in titles]
    cached = text.TitleCache(tmp_path).vectors(pd.Series(every_title, dtype="string"))
    assert np.array_equal(cached, np.stack([_vector_of(title) for title in every_title]))


def test_the_cache_keeps_titles_exactly_and_gives_missing_ones_zeros(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "encode", _fake_encode)
    titles = pd.Series(["mug", None, "Tasse à café ☕", "mug", "trailing space "], dtype="string")
    first = text.TitleCache(tmp_path).vectors(titles)
    monkeypatch.setattr(text, "encode", lambda titles, batch_size=256: pytest.fail(f"encoded again: {titles}"))
    again = text.TitleCache(tmp_path).vectors(titles)
    assert np.array_equal(first, again)
    assert np.array_equal(again[2], _vector_of("Tasse à café ☕")) and np.array_equal(again[4], _vector_of("trailing space "))
    assert np.array_equal(again[0], again[3]) and not again[1].any()


def test_the_lock_serialises_read_modify_write_across_processes(tmp_path):
    counter_path = tmp_path / "missing-dir" / "counter.txt"
    race(_count_under_lock, [(counter_path, INCREMENTS_EACH)] * WRITERS, timeout=20)
    assert int(counter_path.read_text()) == WRITERS * INCREMENTS_EACH
