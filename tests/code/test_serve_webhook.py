"""The service's check of an MLflow webhook delivery, against the signatures MLflow itself makes.

Risks guarded: anyone who can reach the port making the service think the alias moved (it would
only re-read the registry, but a flood of forged deliveries must not count as MLflow's), a
delivery replayed hours later, a secret compared in a way that leaks it through timing.
"""

from __future__ import annotations

import time

from mlflow.webhooks.delivery import _generate_hmac_signature

from flows.serve import WEBHOOK_TOLERANCE_SECONDS, webhook_refusal

SECRET = "a-webhook-secret-of-some-length"
BODY = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "ecommerce-recommender", "alias": "champion", "version": "2"}}'


def signed(body: bytes = BODY, secret: str = SECRET, stamp: int | None = None, delivery: str = "d-1") -> dict[str, str]:
    stamp = str(int(time.time()) if stamp is None else stamp)
    return {
        "x-mlflow-delivery-id": delivery,
        "x-mlflow-timestamp": stamp,
        "x-mlflow-signature": _generate_hmac_signature(secret, delivery, stamp, body.decode()),
    }


def test_a_delivery_mlflow_signed_with_the_secret_is_accepted():
    assert webhook_refusal(SECRET, signed(), BODY) is None


def test_a_wrong_secret_a_changed_body_or_delivery_id_is_refused():
    assert "signature does not match" in webhook_refusal(SECRET, signed(secret="another-secret"), BODY)
    assert "signature does not match" in webhook_refusal(SECRET, signed(), BODY.replace(b'"2"', b'"3"'))
    headers = signed() | {"x-mlflow-delivery-id": "d-2"}
    assert "signature does not match" in webhook_refusal(SECRET, headers, BODY)
    assert "signature does not match" in webhook_refusal(SECRET, signed() | {"x-mlflow-signature": "v1,"}, BODY)


def test_a_stale_or_future_delivery_and_missing_headers_are_refused():
    old = int(time.time()) - WEBHOOK_TOLERANCE_SECONDS - 5
    assert "timestamp" in webhook_refusal(SECRET, signed(stamp=old), BODY)
    assert "timestamp" in webhook_refusal(SECRET, signed(stamp=int(time.time()) + 3600), BODY)
    assert "timestamp" in webhook_refusal(SECRET, signed() | {"x-mlflow-timestamp": "soon"}, BODY)
    for missing in ("x-mlflow-delivery-id", "x-mlflow-timestamp", "x-mlflow-signature"):
        headers = {k: v for k, v in signed().items() if k != missing}
        assert "carries X-MLflow-Delivery-Id" in webhook_refusal(SECRET, headers, BODY)
    assert "not UTF-8" in webhook_refusal(SECRET, signed(), b"\xff\xfe")
