"""`python -m flows land`: what a careless producer or an attacker hands it, and what reaches landing/.

Risks guarded: a run reading half a copied file, a landed file overwritten by another of the same
name (landing is append-only), a link or a folder landed as if it were a batch, a name the scanner
skips or cannot classify landed without a word, a temporary copy left behind for the scanner to
find, a file still being written landed as if it were whole. The events `land` sends reach a real
Prefect server in tests/e2e/test_events.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from data_checks.contract import in_progress
from data_checks.sources.synthetic import write_weeks
from flows.__main__ import main
from tasks.ingest import find_new_files, landing_entries
from tests.conftest import TINY_SHOP


def land(capsys, landing: Path, *files: Path) -> tuple[int, str, str]:
    status = main(["land", *map(str, files), "--landing-dir", str(landing)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def week(tmp_path) -> Path:
    """A real landing file, written outside landing/ (a producer's outbox)."""
    (path,) = [p for p in write_weeks(tmp_path / "outbox", range(0, 1), config=TINY_SHOP) if p.name.startswith("interactions-")]
    return path


def test_a_file_lands_whole_and_the_scanner_registers_it(capsys, settings, week):
    status, out, _ = land(capsys, settings.landing_dir, week)
    assert status == 0
    assert out.splitlines() == [out.splitlines()[0]] and out.startswith(f"landed {settings.landing_dir / week.name} (")
    assert (settings.landing_dir / week.name).read_bytes() == week.read_bytes()
    assert os.listdir(settings.landing_dir) == [week.name]  # no temporary copy left
    (registered,) = find_new_files(settings)
    assert registered.file_name == week.name and registered.kind == "interactions"


def test_the_scanner_never_sees_a_half_copied_file(capsys, tmp_path, settings):
    """While a large file is copied, every name the scanner would take holds the whole file."""
    big = tmp_path / "outbox" / "interactions-big.csv"
    big.parent.mkdir()
    big.write_bytes(b"user_id,item_id,event_time\n" + b"u1,i1,2024-01-01T00:00:00Z\n" * 2_000_000)  # about 54 MB
    size, seen, done = big.stat().st_size, [], threading.Event()

    def watch():
        while not done.is_set():
            for path in landing_entries(settings.landing_dir) if settings.landing_dir.is_dir() else []:
                try:
                    seen.append((path.name, path.stat().st_size))
                except FileNotFoundError:  # the temporary name, gone between listing and stat
                    pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status, _, _ = land(capsys, settings.landing_dir, big)
    finally:
        done.set()
        watcher.join()
    assert status == 0
    assert all(length == size for name, length in seen if not in_progress(name)), sorted(set(seen))[:5]
    assert (settings.landing_dir / big.name).read_bytes() == big.read_bytes()


def test_the_same_content_again_is_nothing_to_do(capsys, settings, week):
    land(capsys, settings.landing_dir, week)
    before = (settings.landing_dir / week.name).stat()
    status, out, _ = land(capsys, settings.landing_dir, week)
    assert status == 0 and "already there with the same content: nothing to do" in out
    after = (settings.landing_dir / week.name).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_name_already_landed_with_other_content_is_refused_and_the_original_kept(capsys, tmp_path, settings, week):
    land(capsys, settings.landing_dir, week)
    original = week.read_bytes()
    other = tmp_path / "other" / week.name
    other.parent.mkdir()
    other.write_bytes(original.replace(b"\n", b"\r\n"))  # the same rows, other bytes
    status, out, err = land(capsys, settings.landing_dir, other)
    assert status == 2 and out == ""
    assert "already exists with other content: landing is append-only" in err
    assert (settings.landing_dir / week.name).read_bytes() == original
    assert os.listdir(settings.landing_dir) == [week.name]


def _folder(tmp_path: Path) -> Path:
    path = tmp_path / "interactions-folder.csv"
    path.mkdir()
    return path


def _link_to_folder(tmp_path: Path) -> Path:
    (tmp_path / "somewhere").mkdir()
    (tmp_path / "interactions-link.csv").symlink_to(tmp_path / "somewhere")
    return tmp_path / "interactions-link.csv"


def _link_to_file(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text("not a batch\n")
    (tmp_path / "interactions-secret.csv").symlink_to(tmp_path / "secret.txt")
    return tmp_path / "interactions-secret.csv"


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "interactions-pipe.csv")  # a plain open would wait for a writer forever
    return tmp_path / "interactions-pipe.csv"


def _named(name: str):
    def make(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_text("user_id,item_id,event_time\nu1,i1,2024-01-01T00:00:00Z\n")
        return path

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_folder, "not a regular file"),
        (_link_to_folder, "a symbolic link"),
        (_link_to_file, "a symbolic link"),
        (_fifo, "not a regular file"),
        (_named(".interactions-week009.csv"), "the scanner skips this name"),
        (_named("interactions-week009.csv.part"), "the scanner skips this name"),
        (_named("interactions-week009.csv~"), "the scanner skips this name"),
        (_named("orders-week009.csv"), "the name does not say what it holds"),
        (_named("interactions-week009.json"), "the name does not say what it holds"),
        (_named("interactions-week009\n.csv"), "control or line-break characters"),
        (_named("interactions-" + "x" * 200 + ".csv"), "longer than 200 characters"),
        (lambda tmp_path: tmp_path / "interactions-missing.csv", "cannot be read"),
    ],
    ids=["folder", "link-to-folder", "link-to-file", "fifo", "hidden", "part", "tilde", "unknown-kind", "json", "line-break", "too-long", "missing"],
)
def test_what_is_not_a_landing_file_is_refused_and_nothing_is_left(capsys, tmp_path, settings, make, message):
    source = make(tmp_path)
    status, out, err = land(capsys, settings.landing_dir, source)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and message in err and "\n" not in err.splitlines()[0]
    assert not settings.landing_dir.exists() or os.listdir(settings.landing_dir) == []


def test_a_file_still_being_written_is_refused_and_its_copy_removed(capsys, tmp_path, settings):
    """The producer appends while `land` copies: the copy is not whole, so it never gets a name."""
    growing = tmp_path / "interactions-growing.csv"
    growing.write_bytes(b"user_id,item_id,event_time\n" + b"u1,i1,2024-01-01T00:00:00Z\n" * 1_000_000)
    done = threading.Event()

    def append():
        with open(growing, "ab") as handle:
            while not done.is_set():
                handle.write(b"u2,i2,2024-01-01T00:00:00Z\n")
                handle.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        status, out, err = land(capsys, settings.landing_dir, growing)
    finally:
        done.set()
        writer.join()
    assert status == 2 and out == ""
    assert "changed while it was copied" in err
    assert os.listdir(settings.landing_dir) == []  # the temporary copy is gone too


def test_one_refused_file_does_not_stop_the_others(capsys, tmp_path, settings, week):
    status, out, err = land(capsys, settings.landing_dir, tmp_path / "interactions-missing.csv", week)
    assert status == 2
    assert err.count("error: ") == 1 and out.startswith("landed ")
    assert os.listdir(settings.landing_dir) == [week.name]
