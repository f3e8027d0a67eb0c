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
