"""Id vocabularies that only ever grow, so a warm-started model keeps every row it had."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class Vocabulary:
    """Maps external ids to table rows. ``reserved`` leading rows (padding, unknown) hold no id."""

    ids: list[str] = field(default_factory=list)
    reserved: int = 0

    def __post_init__(self) -> None:
        self._index = {value: i + self.reserved for i, value in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids) + self.reserved

    def extend(self, values) -> "Vocabulary":
        """A new vocabulary with the unseen values appended, in first-seen order."""
        seen = set(self._index)
        new = [v for v in pd.unique(pd.Series(values, dtype="string").dropna()) if v not in seen]
        return Vocabulary(self.ids + [str(v) for v in new], self.reserved)

    def encode(self, values, missing: int = -1) -> np.ndarray:
        return pd.Series(values, dtype="string").map(self._index).fillna(missing).astype(np.int64).to_numpy(copy=True)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        table = np.array([""] * self.reserved + self.ids, dtype=object)
        return table[rows]

    def __contains__(self, value: str) -> bool:
        return value in self._index
