"""Landing a producer's file: copied whole into landing/, never over another file.

The copy is written under a hidden, in-progress name the landing scanner skips (`in_progress`),
flushed to disk, and only then given its final name, so a run never reads half a file. Landing is
append-only: a name already there keeps its content.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from data_checks.contract import UNKNOWN_KIND, in_progress, kind_of
from data_checks.markup import plain_text
from tasks.events import MAX_NAME_CHARS

BLOCK_BYTES = 1 << 20
# A hard link cannot be made here (FAT, SMB, some FUSE mounts): fall back to a checked rename.
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


class LandingRefused(ValueError):
    """The file is not landed; the message says why. Nothing of it is left in landing/."""


@dataclass(frozen=True)
class Landed:
    file_name: str
    path: Path
    size_bytes: int
    sha256: str
    new: bool  # False: the same content was already in landing/ under this name


def landing_name_problem(name: str) -> str | None:
    """Why a file of this name would not be processed from landing/ (or, for a name that does
    not fit an event, not announced whole), or None."""
    if plain_text(name) != name:
        return "the name holds control or line-break characters"
    if len(name) > MAX_NAME_CHARS:
        return f"the name is longer than {MAX_NAME_CHARS} characters"
    if in_progress(name):
        return "the scanner skips this name: hidden (a leading '.') or in progress (.tmp, .part, ~ and the like)"
    if kind_of(name) is None:
        return UNKNOWN_KIND
    return None


def land_file(source: Path, landing_dir: Path) -> Landed:
    """Copy ``source`` into ``landing_dir`` under its own name, whole or not at all.

    Raises:
        LandingRefused: not a regular file (a folder, a link, a device), a name the scanner would
            not process, a file that changed while it was copied, or a name already in landing/
            with other content.
    """
    problem = landing_name_problem(source.name)
    if problem is not None:
        raise LandingRefused(problem)
    try:
        # O_NOFOLLOW: a link is refused, not followed; O_NONBLOCK: a FIFO cannot hang the open.
        handle = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LandingRefused("a symbolic link: land the file it points to") from None
        raise LandingRefused(f"cannot be read: {error.strerror or error}") from None
    before = os.fstat(handle)
    if not stat.S_ISREG(before.st_mode):
        os.close(handle)
        raise LandingRefused("not a regular file")
    target = landing_dir / source.name
    with os.fdopen(handle, "rb") as reader:
        landing_dir.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):
            digest = _digest(reader)
            _same_or_refused(target, digest, before.st_size)
            return Landed(target.name, target, before.st_size, digest, new=False)
        return _copy_in(reader, before, target)


def _digest(reader: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: reader.read(BLOCK_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()


def _digest_of(path: Path) -> str:
    with open(path, "rb") as reader:
        return _digest(reader)


def _same_or_refused(target: Path, digest: str, size: int) -> None:
    """Landing is append-only: the same content again is nothing to do; other content is refused."""
    existing = os.lstat(target)
    if not (stat.S_ISREG(existing.st_mode) and existing.st_size == size and _digest_of(target) == digest):
        raise LandingRefused(f"{target} already exists with other content: landing is append-only, land it under a new name")


def _copy_in(reader: BinaryIO, before: os.stat_result, target: Path) -> Landed:
    """Write a hidden copy beside ``target``, sync it, then give it the final name."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    assert in_progress(temporary.name)  # the scanner must never register the half-written copy
    digest, size = hashlib.sha256(), 0
    try:
        with open(temporary, "xb") as writer:
            for block in iter(lambda: reader.read(BLOCK_BYTES), b""):
                writer.write(block)
                digest.update(block)
                size += len(block)
            writer.flush()
            os.fsync(writer.fileno())
        after = os.fstat(reader.fileno())
        if size != before.st_size or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise LandingRefused("it changed while it was copied (still being written?): land it once it is complete")
        new = _rename_without_replacing(temporary, target, digest.hexdigest(), size)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_folder(target.parent)
    return Landed(target.name, target, size, digest.hexdigest(), new)


def _rename_without_replacing(temporary: Path, target: Path, digest: str, size: int) -> bool:
    """Give ``temporary``'s content the final name unless another file took it since it was
    checked; False when that file has the same content. A hard link fails on a name that exists,
    where ``os.replace`` would overwrite a file landed in between; the caller removes the
    temporary name."""
    try:
        os.link(temporary, target)
        return True
    except FileExistsError:
        pass
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        if not os.path.lexists(target):
            os.replace(temporary, target)
            return True
    _same_or_refused(target, digest, size)
    return False


def _sync_folder(folder: Path) -> None:
    """Make the new name itself durable; a file system that cannot sync a folder is left as it is."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
