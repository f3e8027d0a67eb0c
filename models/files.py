"""Writing files that other processes may read or write at the same time."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def temporary_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A name of this writer's own beside ``path``, to write and then rename over it: a reader
    never sees half a file, and two writers never write into the same half-written one."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
