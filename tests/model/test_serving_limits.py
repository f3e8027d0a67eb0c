"""The served model's request contract: what it accepts, what it refuses before any scoring, and
that the refusal reaches an HTTP client as a 400 with a message naming the limit.

Risks guarded: one request that ranks the catalog for 20,000 users (tens of seconds of work and
gigabytes, with the server's timeout answering 504 while the work goes on); a documented request
the signature refuses (k left out, a numeric user id); a limit that silently differs from the
settings; an answer frame that costs Python objects per row.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

import models.pyfunc
from data_checks.sources.synthetic import SyntheticShop
from models.settings import Settings
from models.evaluate import top_k
from models.pyfunc import DEFAULT_K, SIGNATURE, RefusedRequest, ServingLimits, recommend
from models.recommender import Recommender, TrainConfig
from models.train import prepare, train
from tasks.registry import serving_limits
from tests.conftest import TINY_SHOP

MODELS_DIR = Path(models.pyfunc.__file__).parent


@pytest.fixture(scope="module")
def recommender() -> Recommender:
    shop = SyntheticShop(0, TINY_SHOP)
    history = pd.concat([shop.week(w) for w in range(2)], ignore_index=True)
    return train(prepare(history, shop.catalog(False), TrainConfig(epochs=1, batch_size=256, dim=8), None), history)


@pytest.fixture
def no_scoring(monkeypatch):
    """Fails the test if the model ranks anything: refusals must come first."""

    def scored(*args, **kwargs):
        raise AssertionError("the request was scored before it was refused")

    monkeypatch.setattr(models.pyfunc, "rank", scored)


def lists(frame: pd.DataFrame) -> dict[str, list[str]]:
    return frame.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()


def test_the_fallback_limits_are_the_settings_defaults():
    # A version registered before the limits travelled with it gets these.
    fields = Settings.model_fields
    assert ServingLimits() == ServingLimits(max_k=fields["max_k"].default, max_request_rows=fields["max_request_rows"].default)
    assert serving_limits(Settings(max_k=7, max_request_rows=9)) == ServingLimits(max_k=7, max_request_rows=9)


def test_too_many_rows_are_refused_before_any_scoring(recommender, no_scoring):
    requests = pd.DataFrame({"user_id": [f"visitor-{i}" for i in range(20_000)], "k": 1000})
    with pytest.raises(RefusedRequest, match="at most 1000 rows") as refused:
        recommend(recommender, requests)
    assert "max_request_rows" in str(refused.value) and "FRESHREC_MAX_REQUEST_ROWS" in str(refused.value)
    assert "got 20000" in str(refused.value)
    with pytest.raises(RefusedRequest, match="at most 3 rows"):
        recommend(recommender, requests.head(4), ServingLimits(max_request_rows=3))


@pytest.mark.parametrize("k", [0, -1, 101, 10**30, 2.5, math.inf, "ten", "5", True, [5]])
def test_a_k_out_of_range_or_not_whole_is_refused_before_any_scoring(recommender, no_scoring, k):
    requests = pd.DataFrame({"user_id": ["a", "b"], "k": pd.Series([3, k], dtype=object)})
    with pytest.raises(RefusedRequest, match="k must be between 1 and 100") as refused:
        recommend(recommender, requests)
    message = str(refused.value)
    assert "max_k" in message and "FRESHREC_MAX_K" in message and "whole number" in message and "row 1" in message


@pytest.mark.parametrize(
    "user_id", [None, float("nan"), pd.NA, "", True, {"id": 1}, [17850], 17850.5, math.inf], ids=repr
)
def test_a_missing_or_unreadable_user_id_is_refused_before_any_scoring(recommender, no_scoring, user_id):
    requests = pd.DataFrame({"user_id": pd.Series(["a", user_id], dtype=object), "k": 3})
    with pytest.raises(RefusedRequest, match="user_id must be text or a whole number, not null or empty: row 1"):
        recommend(recommender, requests)


def test_a_request_without_user_ids_is_refused(recommender, no_scoring):
    with pytest.raises(RefusedRequest, match="needs a 'user_id' column.*'customer'"):
        recommend(recommender, pd.DataFrame({"customer": ["a"], "k": [3]}))


def test_k_is_optional_per_row_and_null_is_the_default(recommender):
    known = recommender.users.ids[0]
    without_k = recommend(recommender, pd.DataFrame({"user_id": [known, "stranger"]}))
    assert without_k.groupby("user_id").size().to_dict() == {known: DEFAULT_K, "stranger": DEFAULT_K}
    mixed = recommend(recommender, pd.DataFrame({"user_id": [known, "stranger", "other"], "k": [None, 4, float("nan")]}))
    assert mixed.groupby("user_id", sort=False).size().to_dict() == {known: DEFAULT_K, "stranger": 4, "other": DEFAULT_K}
    assert len(recommend(recommender, pd.DataFrame({"user_id": [known], "k": [100]}))) == 100  # the limit itself


def test_numeric_and_text_user_ids_are_the_same_user(recommender):
    user = next(u for u in recommender.users.ids if u.isdigit())
    as_text = lists(recommend(recommender, pd.DataFrame({"user_id": [user], "k": 5})))
    assert list(as_text) == [user]
    for column in (pd.Series([int(user)]), pd.Series([float(user)]), pd.Series([np.int32(user)], dtype=object)):
        assert lists(recommend(recommender, pd.DataFrame({"user_id": column, "k": 5}))) == as_text
    # A number the model never saw is a stranger: the most popular items.
    stranger = recommend(recommender, pd.DataFrame({"user_id": [987654321], "k": 3}))
    assert stranger["user_id"].tolist() == ["987654321"] * 3
    assert stranger["item_id"].tolist() == recommender.item_counts.nlargest(3).index.tolist()


def test_the_answer_frame_is_the_row_by_row_one(recommender):
    """Built with numpy: the same rows, order and types as one tuple per recommendation, with
    a short catalog's empty slots left out (k above the catalog size)."""
    users = pd.Series([recommender.users.ids[0], "stranger", recommender.users.ids[1], recommender.users.ids[0]])
    ks = np.array([3, 1, 400, 2])
    out = recommend(recommender, pd.DataFrame({"user_id": users, "k": ks}), ServingLimits(max_k=1000))
    items, scores = top_k(recommender, users, int(ks.max()))
    rows = [
        (user, rank + 1, items[i, rank], float(scores[i, rank]))
        for i, (user, k) in enumerate(zip(users, ks))
        for rank in range(k)
        if items[i, rank]
    ]
    expected = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])
    pd.testing.assert_frame_equal(out, expected)
    assert len(out[out["user_id"] == recommender.users.ids[1]]) == len(recommender.items) - 1  # every real item, once


def test_the_largest_allowed_request_costs_no_python_objects_per_row(recommender):
    requests = pd.DataFrame({"user_id": [recommender.users.ids[i % 100] if i % 2 else f"v{i}" for i in range(1000)], "k": 100})
    recommend(recommender, requests)  # warm: first-call allocations are not the request's
    tracemalloc.start()
    try:
        out = recommend(recommender, requests)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out) == 100_000
    # Measured: 119 bytes per answer row built with numpy, 216 with a tuple per row.
    assert peak / len(out) < 160


@pytest.fixture(scope="module")
def saved(recommender, tmp_path_factory):
    """Save the pyfunc as log_run logs it, with or without limits in its model_config (a max_k
    below DEFAULT_K is also the default k)."""
    root = tmp_path_factory.mktemp("pyfunc")
    checkpoint = recommender.save(root / "model.pt")

    def save(name: str, limits: ServingLimits | None) -> str:
        path = root / name
        mlflow.pyfunc.save_model(
            path,
            python_model=str(MODELS_DIR / "mlflow_model.py"),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(MODELS_DIR)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({"user_id": [recommender.users.ids[0], "new-visitor"], "k": 3}),
            model_config=limits.as_config() if limits else None,
        )
        return str(path)

    return save


def invoke(model, body: dict) -> tuple[int, dict]:
    """What `mlflow models serve` answers to a JSON body: its own invocations function and the
    error mapping of its /invocations route."""
    try:
        answer = scoring_server.invocations(json.dumps(body), "application/json", model, model.metadata.get_input_schema())
    except MlflowException as error:
        return error.get_http_status_code(), json.loads(error.serialize_as_json())
    return answer.status, json.loads(answer.response)


def test_a_registered_version_enforces_the_limits_it_was_logged_with(recommender, saved):
    path = saved("limited", ServingLimits(max_k=5, max_request_rows=3))
    model = mlflow.pyfunc.load_model(path)
    user = recommender.users.ids[0]
    status, body = invoke(model, {"dataframe_split": {"columns": ["user_id", "k"], "data": [[user, 6]]}})
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "k must be between 1 and 5 (max_k" in body["message"]
    status, body = invoke(model, {"dataframe_split": {"columns": ["user_id"], "data": [["a"], ["b"], ["c"], ["d"]]}})
    assert status == 400 and "at most 3 rows (max_request_rows" in body["message"] and "got 4" in body["message"]
    status, body = invoke(model, {"dataframe_split": {"columns": ["user_id"], "data": [[user], [None]]}})
    assert status == 400 and "user_id must be text or a whole number" in body["message"]
    status, body = invoke(model, {"dataframe_split": {"columns": ["customer"], "data": [["a"]]}})
    assert status == 400 and "missing inputs ['user_id']" in body["message"]
    status, body = invoke(model, {"dataframe_split": {"columns": ["user_id", "k"], "data": [[int(user), 2], ["stranger", None]]}})
    assert status == 200 and pd.DataFrame(body["predictions"]).groupby("user_id").size().to_dict() == {user: 2, "stranger": 5}
    # An operator may change a logged limit when loading (MLFLOW_PYFUNC_INFERENCE_CONFIG when serving).
    raised = mlflow.pyfunc.load_model(path, model_config={"max_k": 8})
    assert len(raised.predict(pd.DataFrame({"user_id": [user], "k": [8]}))) == 8


def test_the_python_predict_takes_numeric_ids_and_leaves_k_out(recommender, saved):
    model = mlflow.pyfunc.load_model(saved("default", serving_limits(Settings())))
    user = next(u for u in recommender.users.ids if u.isdigit())
    numeric = model.predict(pd.DataFrame({"user_id": [int(user)]}))
    assert numeric["user_id"].tolist() == [user] * DEFAULT_K
    assert numeric.equals(model.predict(pd.DataFrame({"user_id": [user]})))
    with pytest.raises(MlflowException, match="at most 1000 rows") as refused:
        model.predict(pd.DataFrame({"user_id": range(1001)}))
    assert refused.value.get_http_status_code() == 400


def test_a_version_logged_without_limits_gets_the_defaults(recommender, saved):
    model = mlflow.pyfunc.load_model(saved("older", None))
    user = recommender.users.ids[0]
    assert len(model.predict(pd.DataFrame({"user_id": [user], "k": [100]}))) == 100
    with pytest.raises(MlflowException, match="k must be between 1 and 100"):
        model.predict(pd.DataFrame({"user_id": [user], "k": [101]}))


@pytest.mark.parametrize("config", [{"max_k": 0}, {"max_request_rows": "1000"}, {"max_k": True}])
def test_an_unusable_limit_stops_the_model_from_loading(config):
    with pytest.raises(ValueError, match="must be a whole number of at least 1"):
        ServingLimits.from_config(config)
