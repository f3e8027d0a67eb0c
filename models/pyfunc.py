"""The registered model: an MLflow pyfunc that recommends items for users.

Input: a frame with ``user_id`` (text or a whole number: ``17850`` and ``"17850"`` are the same
user) and, optionally, ``k`` per row (items wanted; missing or null: DEFAULT_K, or max_k where
that is lower). Output: one row per recommendation, ``user_id, rank, item_id, score``. Users the
model never saw get its most popular items, so a request never fails for a new visitor.

A request beyond its version's ServingLimits, or one it cannot read, is refused before any
scoring: ``recommend`` raises RefusedRequest, which ``predict`` turns into the MlflowException
that `mlflow models serve` answers with a 400 and the message.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from dataclasses import asdict, dataclass
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema

from models.evaluate import Ranker
from models.recommender import Recommender

DEFAULT_K = 10
SCORES_PER_CHUNK = 4_000_000  # user x item scores held at once while ranking: 16 MB of float32

# user_id and k are `Any`: MLflow's typed columns refuse an int64 user_id (a string column) or a
# k with a null in it (a long column) before predict sees them; recommend checks both itself.
# JSON (dataframe_split, dataframe_records) and Parquet bodies are read; CSV needs typed columns.
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), "user_id"), ColSpec(AnyType(), "k", required=False)]),
    outputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "rank"), ColSpec("string", "item_id"), ColSpec("double", "score")]),
)


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of a model version. They travel with the version as its MLflow
    ``model_config``, from the settings of the same names; the defaults here (the settings'
    defaults) hold for versions registered before they did."""

    max_k: int = 100
    max_request_rows: int = 1_000

    @property
    def default_k(self) -> int:
        """A row's k when it has none: DEFAULT_K, or max_k where that is lower."""
        return min(DEFAULT_K, self.max_k)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "ServingLimits":
        """The limits in a loaded model's ``model_config`` (None or missing keys: the defaults).
        A value that is not a positive whole number stops the model from loading."""
        limits = {name: value for name, value in (config or {}).items() if name in cls.__dataclass_fields__}
        for name, value in limits.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"the model_config's {name} must be a whole number of at least 1, got {value!r}")
        return cls(**limits)

    def as_config(self) -> dict[str, int]:
        return asdict(self)


class RefusedRequest(ValueError):
    """A request the model will not score; the message tells the client why."""


class RecommenderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.recommender = Recommender.load(context.artifacts["checkpoint"])
        self.limits = ServingLimits.from_config(context.model_config)
        self.ranker = warm_ranker(self.recommender, self.limits)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return recommend(self.ranker, model_input, self.limits)
        except RefusedRequest as refused:
            # INVALID_PARAMETER_VALUE: the scoring server answers 400 with this message.
            raise MlflowException.invalid_parameter_value(str(refused)) from refused


def warm_ranker(recommender: Recommender, limits: ServingLimits) -> Ranker:
    """A Ranker for serving ``recommender`` within ``limits``, warmed: the item tables, and the
    basket memory's neighbour state that the first known user would otherwise build, are ready
    before the first request."""
    ranker = Ranker(recommender, limits.max_k)
    if recommender.users.ids:
        ranker.top_k([recommender.users.ids[0]], 1)
    return ranker


def recommend(ranker: Ranker | Recommender, requests: pd.DataFrame, limits: ServingLimits = ServingLimits()) -> pd.DataFrame:
    """The k best items for each requested user, ``user_id, rank, item_id, score``, rows in
    request order and then by rank. ``ranker``: the loaded model's, or a recommender (its item
    tables are then computed for this call).

    Raises:
        RefusedRequest: more rows than ``limits.max_request_rows``, no ``user_id`` column, a
            missing or unreadable user id, or a k that is not a whole number from 1 to
            ``limits.max_k``; checked in that order, before any scoring.
    """
    user_ids, ks = read_requests(requests, limits)
    k_max = int(ks.max()) if len(ks) else DEFAULT_K
    if isinstance(ranker, Recommender):
        ranker = Ranker(ranker, k_max)
    items, scores = rank(ranker, user_ids, k_max)
    listed = (np.arange(k_max) < ks[:, None]) & (items != "")  # each row's first k, and no empty slot of a short catalog
    rows, ranks = np.nonzero(listed)  # row-major: request order, then rank
    return pd.DataFrame(
        {"user_id": user_ids[rows], "rank": ranks + 1, "item_id": items[listed], "score": scores[listed].astype(np.float64)}
    )


def rank(ranker: Ranker, user_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``Ranker.top_k`` of the users (model ids, as text), in chunks of users whose scores over
    the whole catalog fit SCORES_PER_CHUNK."""
    chunk = max(1, SCORES_PER_CHUNK // len(ranker.recommender.items))
    return ranker.top_k(user_ids, k, chunk=chunk)


def read_requests(requests: pd.DataFrame, limits: ServingLimits) -> tuple[np.ndarray, np.ndarray]:
    """Each row's user id as the model's text id, and its k; or RefusedRequest. The row count
    is checked first, so the per-row checks after it are bounded by the limit."""
    if len(requests) > limits.max_request_rows:
        raise RefusedRequest(
            f"a request may hold at most {limits.max_request_rows} rows (max_request_rows: the FRESHREC_MAX_REQUEST_ROWS "
            f"setting this model version was registered with), got {len(requests)}: send the users in smaller requests"
        )
    if "user_id" not in requests.columns:
        raise RefusedRequest(f"the request needs a 'user_id' column, one row per user; its columns are {list(requests.columns)}")
    user_ids = requests["user_id"].map(user_id_text).to_numpy(dtype=object)
    _refuse_rows(pd.isna(user_ids), "user_id must be text or a whole number, not null or empty", requests["user_id"])
    if "k" not in requests.columns:
        return user_ids, np.full(len(requests), limits.default_k, dtype=np.int64)
    ks = requests["k"].map(lambda value: read_k(value, limits)).to_numpy(dtype=object)
    _refuse_rows(
        pd.isna(ks),
        f"k must be between 1 and {limits.max_k} (max_k: the FRESHREC_MAX_K setting this model version was registered "
        f"with) and a whole number, or null for the default of {limits.default_k}",
        requests["k"],
    )
    return user_ids, ks.astype(np.int64)


def user_id_text(value: object) -> str | None:
    """A user id as the model's vocabulary holds it, or None (missing or unreadable). 17850,
    17850.0 and "17850" are one user: ids arrive as numbers from spreadsheets and JSON clients."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and float(value).is_integer():  # False for NaN and infinity
        return str(int(value))
    return None


def read_k(value: object, limits: ServingLimits) -> int | None:
    """A row's k (the default when null), or None when it is not a whole number from 1 to max_k."""
    if value is None or value is pd.NA or (isinstance(value, numbers.Real) and math.isnan(value)):
        return limits.default_k
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not float(value).is_integer():
        return None
    return int(value) if 1 <= value <= limits.max_k else None


def _refuse_rows(refused: np.ndarray, rule: str, values: pd.Series) -> None:
    if refused.any():
        first = int(np.flatnonzero(refused)[0])
        value = values.iloc[first]
        value = value.item() if isinstance(value, np.generic) else value
        raise RefusedRequest(
            f"{rule}: row {first} (counting from 0) has {reprlib.repr(value)}; "
            f"{int(refused.sum())} of {len(refused)} rows break the rule"
        )
