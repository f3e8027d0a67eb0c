"""Adapters that map sources to the data contract and write landing files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.files import temporary_beside


def write_landing_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write beside the target and rename, so a reader of landing/ never sees half a file.
    Times are written in ISO 8601 UTC, as the contract reads them."""
    tmp = temporary_beside(path)
    frame.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    tmp.replace(path)
    return path
