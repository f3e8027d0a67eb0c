"""Id vocabularies that only ever grow, so a warm-started model keeps every row it had."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


FEW = 64  # ids encoded by dict lookups, without pandas


@dataclass
class Vocabulary:
    """Maps external ids to table rows. ``reserved`` leading rows (padding, unknown) hold no id."""

    ids: list[str] = field(default_factory=list)
    reserved: int = 0

    def __post_init__(self) -> None:
        self._index = {value: i + self.reserved for i, value in enumerate(self.ids)}
        self._lookup: pd.Index | None = None  # the ids as a hashed index, built on the first encode
        self._table: np.ndarray | None = None  # row -> id ("" for reserved rows), built on the first decode

    def __len__(self) -> int:
        return len(self.ids) + self.reserved

    def extend(self, values) -> "Vocabulary":
        """A new vocabulary with the unseen values appended, in first-seen order."""
        seen = set(self._index)
        new = [v for v in pd.unique(pd.Series(values, dtype="string").dropna()) if v not in seen]
        return Vocabulary(self.ids + [str(v) for v in new], self.reserved)

    def encode(self, values, missing: int = -1) -> np.ndarray:
        """The rows of ``values`` (read as text: 17850 is "17850"), ``missing`` for ids not in
        the vocabulary and for missing values. The hashed index is built once per vocabulary,
        so encoding one id costs microseconds, not a pass over every id."""
        if isinstance(values, (list, tuple, np.ndarray)) and len(values) <= FEW and all(type(v) is str for v in values):
            # A served request's few ids: a dict lookup each beats building a Series (1.5 ms).
            return np.array([self._index.get(v, missing) for v in values], dtype=np.int64)
        if self._lookup is None:
            self._lookup = pd.Index(self.ids, dtype=object)
        text = pd.Series(values, dtype="string")
        rows = self._lookup.get_indexer(text.astype(object).where(text.notna(), None)).astype(np.int64)
        found = rows >= 0
        rows[found] += self.reserved
        rows[~found] = missing
        return rows

    def decode(self, rows: np.ndarray) -> np.ndarray:
        if self._table is None or len(self._table) != len(self):
            self._table = np.array([""] * self.reserved + self.ids, dtype=object)
        return self._table[rows]

    def __contains__(self, value: str) -> bool:
        return value in self._index
