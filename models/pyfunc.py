"""The registered model: an MLflow pyfunc that recommends items for users.

Input: a frame with ``user_id`` and, optionally, ``k`` (per row; default 10). Output: one row
per recommendation, ``user_id, rank, item_id, score``. Users the model never saw get its most
popular items, so a request never fails for a new visitor.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from models.evaluate import top_k
from models.train import Recommender

DEFAULT_K = 10
MAX_K = 1000  # a guard against a request that would rank the whole catalog for every user


class RecommenderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.recommender = Recommender.load(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return recommend(self.recommender, model_input)


def recommend(recommender: Recommender, requests: pd.DataFrame) -> pd.DataFrame:
    if "user_id" not in requests.columns:
        raise ValueError("the input needs a 'user_id' column")
    user_ids = requests["user_id"].astype("string")
    ks = requests["k"].fillna(DEFAULT_K).astype(int) if "k" in requests.columns else pd.Series(DEFAULT_K, index=requests.index)
    if (ks < 1).any() or (ks > MAX_K).any():
        raise ValueError(f"k must be between 1 and {MAX_K}")
    k_max = int(ks.max()) if len(ks) else DEFAULT_K
    items, scores = top_k(recommender, user_ids.reset_index(drop=True), k_max)
    rows = []
    for i, (user, k) in enumerate(zip(user_ids, ks)):
        for rank in range(k):
            if items[i, rank]:
                rows.append((str(user), rank + 1, items[i, rank], float(scores[i, rank])))
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
