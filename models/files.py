"""Writing files that other processes may read or write at the same time."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A name of this writer's own beside ``path``, to write and then rename over it: a reader
    never sees half a file, and two writers never write into the same half-written one."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, for a read-merge-write that must not
    interleave with another writer's (a rename alone keeps files whole, not updates).

    The lock is ``fcntl.flock`` on ``<path>.lock`` beside the target, so it serialises the
    processes of one host, or of hosts sharing a POSIX filesystem that supports flock (Linux
    NFS does); it means nothing on an object store. Readers need not take it: writers still
    rename a whole file into place. The kernel drops the lock when the process dies.
    """
    lock_path = path.with_name(f"{path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # The lock file is never removed: a writer that deleted it could leave the next two
    # locking two different files of one name.
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- Parquet ------------------------------------------------------------------------------------
# pandas hands Arrow a Python file object for a local path (`read_parquet`, `to_parquet`). Arrow's
# I/O threads then call back into Python to read or close it, and one such thread can outlive the
# interpreter's shutdown: the process ends with "terminate called without an active exception"
# (SIGABRT) after its work is done (apache/arrow#34314, #50482; benchmarks/parquet_exit.py counts
# it). Every Parquet file of freshrec is opened by Arrow itself through these two functions.


def read_parquet(source: Path | str | bytes, columns: list[str] | None = None):
    """A DataFrame from a Parquet file (a local path, or the file's bytes), opened by Arrow."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.fs

    if isinstance(source, (bytes, bytearray, memoryview)):
        return pd.read_parquet(pa.BufferReader(source), columns=columns)
    return pd.read_parquet(os.path.abspath(source), columns=columns, filesystem=pyarrow.fs.LocalFileSystem())


def write_parquet(frame, path: Path | str, index: bool | None = False) -> Path:
    """Write ``frame`` to ``path`` as `DataFrame.to_parquet` does (without its index unless
    ``index``), through a file Arrow opens itself. Returns ``path``."""
    import pyarrow.fs

    frame.to_parquet(os.path.abspath(path), index=index, filesystem=pyarrow.fs.LocalFileSystem())
    return Path(path)
