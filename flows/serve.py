"""The recommendation service: the registry's champion over HTTP, following its alias.

    python -m flows serve [--host 127.0.0.1] [--port 8000]      # what `make serve` runs

The service loads the version that the champion alias names: the MLflow pyfunc the flows
registered, read from the store of the settings (MLFLOW_TRACKING_URI). Every
``serve_poll_seconds`` it asks the registry again. When the alias has moved (a promotion or a
rollback), it loads that version beside the one answering and warms it, then swaps. A request in
flight finishes on the version it started with and the next one gets the new version, so none is
dropped. A version that fails to load leaves the current one answering: the failure shows in
``/version`` and in the log, and the load is tried again later.

Endpoints (each answer names the model version that produced it, also as ``X-Model-Version``):

    GET  /recommendations/{user_id}?k=K             one user's K best items (default 10)
    POST /recommendations {"user_ids": [...], "k": K}   several users, at most the version's max_request_rows
    GET  /version                                   which version answers, since when, the last check
    GET  /healthz                                   200 once a version answers, 503 before

Input errors are 4xx answers with an ``error`` message: 400 for a request the model refuses (see
models.pyfunc), 413 for a body over ``serve_max_body_bytes``, and 422 for a body that is not the
documented JSON. A user the model never saw gets its most popular items (``known_user``: false).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import sys
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.settings import Settings, redact
from models.evaluate import Ranker
from models.pyfunc import RecommenderModel, RefusedRequest, ServingLimits, rank, read_k, read_requests

logger = logging.getLogger("freshrec.serve")

MAX_USER_ID_CHARS = 256  # a path's user id; longer ids are no shop's
MAX_ERROR_CHARS = 1_000  # of an error message sent to a client
MAX_RETRY_SECONDS = 600.0  # the longest wait before a version that failed to load is tried again


@dataclass(frozen=True)
class Champion:
    """One loaded version, ready to answer. Replaced whole, never changed: a request reads the
    current one once and uses it to the end."""

    model_name: str
    version: str
    run_id: str
    ranker: Ranker
    limits: ServingLimits
    serving_since: datetime
    load_seconds: float

    def answer(self, user_ids: np.ndarray, k: int) -> list[dict[str, Any]]:
        """Each user's k best items as ``{"item_id", "score"}`` dicts, best first."""
        items, scores = rank(self.ranker, user_ids, k)
        known = self.ranker.recommender.users
        lists = []
        for user, row_items, row_scores in zip(user_ids, items, scores):
            # A catalog shorter than k leaves empty slots; an excluded item (consumed) scores -inf.
            shown = (row_items != "") & np.isfinite(row_scores)
            lists.append({
                "user_id": user,
                "known_user": user in known,
                "items": [{"item_id": item, "score": float(score)} for item, score in zip(row_items[shown], row_scores[shown])],
            })
        return lists


def load_version(settings: Settings, version: str, run_id: str) -> Champion:
    """Download and load ``version`` of the registered model as its pyfunc, warmed."""
    import mlflow.pyfunc

    started = time.monotonic()
    search_path = list(sys.path)
    from tasks.tracking import tracking_store

    with tempfile.TemporaryDirectory(prefix="freshrec-serve-") as scratch, tracking_store(settings):
        try:
            loaded = mlflow.pyfunc.load_model(f"models:/{settings.registered_model_name}/{version}", dst_path=scratch)
        finally:
            # MLflow puts the version's code directory (inside scratch) on sys.path; this
            # process already runs freshrec's code, and the directory is about to go.
            sys.path[:] = search_path
    model = loaded.unwrap_python_model()
    if not isinstance(model, RecommenderModel):
        raise TypeError(f"version {version} of {settings.registered_model_name} is a {type(model).__name__}, not freshrec's RecommenderModel")
    return Champion(
        settings.registered_model_name, version, run_id, model.ranker, model.limits,
        serving_since=datetime.now(timezone.utc), load_seconds=round(time.monotonic() - started, 3),
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return redact(text)[:MAX_ERROR_CHARS]


class ChampionWatcher:
    """Keeps ``current`` at the version the champion alias names: checks the registry every
    ``poll_seconds`` (or at once after ``wake``) and swaps when the alias moved."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.poll_seconds = settings.serve_poll_seconds
        self.current: Champion | None = None
        self.last_checked: datetime | None = None
        self.last_error: str | None = None
        self._failed: tuple[str, float, float] | None = None  # (version, when it failed, seconds to wait)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """One look at the registry; loads and swaps to the alias's version when it changed."""
        from tasks.tracking import champion_version, registry_client

        name, alias = self.settings.registered_model_name, self.settings.champion_alias
        try:
            named = champion_version(registry_client(self.settings), self.settings)
        except Exception as error:  # the registry is down or refuses: keep answering with what we have
            self.last_error = f"could not read {name}@{alias} from the registry: {_one_line(error)}"
            logger.warning("%s", self.last_error)
            return
        self.last_checked = datetime.now(timezone.utc)
        if named is None:
            self.last_error = f"no version of {name} has the alias @{alias} yet: run the bootstrap flow first"
            return
        version = str(named.version)
        if self.current is not None and self.current.version == version:
            self.last_error = None
            return
        if self._failed and self._failed[0] == version and time.monotonic() < self._failed[1] + self._failed[2]:
            return  # still waiting before trying that version again; last_error says why
        was = self.current.version if self.current else None
        try:
            champion = load_version(self.settings, version, named.run_id)
        except Exception as error:
            wait = min(MAX_RETRY_SECONDS, 2 * self._failed[2]) if self._failed and self._failed[0] == version else self.poll_seconds
            self._failed = (version, time.monotonic(), wait)
            answering = f"version {was} keeps answering" if was else "nothing answers yet"
            self.last_error = f"version {version} of {name} (@{alias}) did not load: {_one_line(error)}; {answering}, next try in {wait:.0f} s"
            logger.error("%s", self.last_error)
            return
        self.current, self._failed, self.last_error = champion, None, None
        logger.info("now serving %s version %s (@%s; was %s), loaded in %.1f s", name, version, alias, was or "none", champion.load_seconds)

    def wake(self) -> None:
        """Check the registry now instead of at the end of the period."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # never let the watcher die: the next period tries again
                logger.exception("checking the champion alias failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()


class BatchRequest(BaseModel):
    """Several users at once: ids as text or whole numbers, one k for all (null: the default)."""

    model_config = ConfigDict(extra="forbid")
    user_ids: list[Any] = Field(min_length=1, description="the users, as text or whole numbers; at most the version's max_request_rows")
    k: Any = Field(default=None, description="items per user, from 1 to the version's max_k; default 10")


def _error(status: int, message: str, champion: Champion | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"error": message[:MAX_ERROR_CHARS]}
    if champion is not None:
        body["model_version"] = champion.version
        headers["X-Model-Version"] = champion.version
    return JSONResponse(body, status_code=status, headers=headers)


WEBHOOK_TOLERANCE_SECONDS = 300  # a delivery signed longer ago (or ahead) than this is refused


def webhook_refusal(secret: str, headers, body: bytes, now: float | None = None) -> str | None:
    """Why an MLflow webhook delivery is refused, or None when its signature holds: HMAC-SHA256
    with ``secret`` over "<X-MLflow-Delivery-Id>.<X-MLflow-Timestamp>.<body>", sent as
    "v1,<base64>" in X-MLflow-Signature, and a timestamp within WEBHOOK_TOLERANCE_SECONDS."""
    delivery, stamp, signature = (headers.get(name) for name in ("x-mlflow-delivery-id", "x-mlflow-timestamp", "x-mlflow-signature"))
    if not (delivery and stamp and signature):
        return "an MLflow webhook delivery carries X-MLflow-Delivery-Id, X-MLflow-Timestamp and X-MLflow-Signature"
    if not stamp.isdigit() or abs((time.time() if now is None else now) - int(stamp)) > WEBHOOK_TOLERANCE_SECONDS:
        return f"the delivery's timestamp is not within {WEBHOOK_TOLERANCE_SECONDS} s of now"
    try:
        signed = f"{delivery}.{stamp}.{body.decode('utf-8')}".encode()
    except UnicodeDecodeError:
        return "the delivery's body is not UTF-8"
    expected = "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return "the delivery's signature does not match serve_webhook_secret"
    return None


def _bad_k(champion: Champion, k: object) -> str:
    return f"k must be a whole number from 1 to {champion.limits.max_k} (max_k of version {champion.version}), or null for {champion.limits.default_k}; got {str(k)[:40]!r}"


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413, by its Content-Length or, for a
    chunked body, as soon as the bytes read pass the limit: a body is never held whole first."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _error(400, "Content-Length is not a whole number")(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await self._too_large(scope, receive, send)
        received = 0
        too_large = answered = False

        async def limited_receive():
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # What the app answers to a body cut short is replaced by the 413 below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def limited_send(message):
            nonlocal answered
            if not too_large:
                await send(message)
            elif not answered:
                answered = True
                await self._too_large(scope, receive, send)

        try:
            await self.app(scope, limited_receive, limited_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not answered:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send) -> None:
        message = f"the request body is larger than {self.max_bytes} bytes (serve_max_body_bytes): send fewer users a request"
        await _error(413, message)(scope, receive, send)


def create_app(settings: Settings, watcher: ChampionWatcher | None = None) -> FastAPI:
    """The service's app; its watcher runs while the app does (uvicorn's lifespan)."""
    watcher = watcher or ChampionWatcher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()

    app = FastAPI(
        title="freshrec recommendations",
        description=f"The {settings.registered_model_name}@{settings.champion_alias} model, following the alias.",
        version="1",
        lifespan=lifespan,
    )
    app.state.watcher = watcher
    app.add_middleware(BodyLimit, max_bytes=settings.serve_max_body_bytes)

    def champion_or_none() -> Champion | None:
        return watcher.current

    def unavailable() -> JSONResponse:
        reason = watcher.last_error or "the first version is still loading"
        return _error(503, f"no model answers yet: {reason}", **{"Retry-After": str(max(1, round(watcher.poll_seconds)))})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # Each problem's place and rule, never the input itself (it may be megabytes, or markup).
        problems = [f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in error.errors()[:10]]
        return _error(422, "; ".join(problems), champion_or_none())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # An unknown path or method: the same {"error": ...} body as every other refusal.
        return _error(error.status_code, str(error.detail), champion_or_none(), **(error.headers or {}))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("answering %s %s failed", request.method, request.url.path)
        return _error(500, "the service failed to answer this request; its log has the details", champion_or_none())

    @app.get("/recommendations/{user_id:path}")  # an id may hold "/"
    def recommend_one(
        user_id: Annotated[str, Path(min_length=1, max_length=MAX_USER_ID_CHARS, description="the user, as the shop's data names them")],
        k: Annotated[int | None, Query(description="items wanted, from 1 to the version's max_k; default 10")] = None,
    ) -> JSONResponse:
        champion = champion_or_none()
        if champion is None:
            return unavailable()
        wanted = read_k(k, champion.limits)
        if wanted is None:
            return _error(400, _bad_k(champion, k), champion)
        (answer,) = champion.answer(np.array([user_id], dtype=object), wanted)
        return JSONResponse({"model_version": champion.version, **answer}, headers={"X-Model-Version": champion.version})

    @app.post("/recommendations")
    def recommend_many(request: BatchRequest) -> JSONResponse:
        champion = champion_or_none()
        if champion is None:
            return unavailable()
        if len(request.user_ids) > champion.limits.max_request_rows:  # before any per-user work
            return _error(
                400, f"a request may hold at most {champion.limits.max_request_rows} users (max_request_rows of version "
                f"{champion.version}), got {len(request.user_ids)}: send them in smaller requests", champion,
            )
        wanted = read_k(request.k, champion.limits)
        if wanted is None:
            return _error(400, _bad_k(champion, request.k), champion)
        try:
            user_ids, _ = read_requests(pd.DataFrame({"user_id": pd.Series(request.user_ids, dtype=object)}), champion.limits)
        except RefusedRequest as refused:
            return _error(400, str(refused).replace("row ", "user_ids[", 1).replace(" (counting from 0)", "]", 1), champion)
        answers = champion.answer(user_ids, wanted)
        return JSONResponse({"model_version": champion.version, "recommendations": answers}, headers={"X-Model-Version": champion.version})

    @app.post("/webhooks/mlflow", include_in_schema=False)
    async def mlflow_webhook(request: Request) -> JSONResponse:
        """An MLflow registry webhook (Standard Webhooks signing): a valid, fresh signature makes
        the watcher check the alias now. The payload itself is never trusted: the registry is
        asked which version the alias names, as at every poll."""
        if settings.serve_webhook_secret is None:
            return _error(404, "Not Found")
        body = await request.body()
        refusal = webhook_refusal(settings.serve_webhook_secret.get_secret_value(), request.headers, body)
        if refusal:
            logger.warning("refused a webhook delivery: %s", refusal)
            return _error(401, refusal)
        watcher.wake()
        return JSONResponse({"status": "checking the alias now"})

    @app.get("/version")
    def version() -> JSONResponse:
        champion = champion_or_none()
        body: dict[str, Any] = {
            "model_name": settings.registered_model_name,
            "alias": settings.champion_alias,
            "model_version": None,
            "poll_seconds": watcher.poll_seconds,
            "last_checked": watcher.last_checked.isoformat() if watcher.last_checked else None,
            "last_error": watcher.last_error,
        }
        if champion is not None:
            body |= {
                "model_version": champion.version,
                "run_id": champion.run_id,
                "serving_since": champion.serving_since.isoformat(),
                "load_seconds": champion.load_seconds,
                "max_k": champion.limits.max_k,
                "max_request_rows": champion.limits.max_request_rows,
            }
        headers = {"X-Model-Version": champion.version} if champion else {}
        return JSONResponse(body, headers=headers)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        champion = champion_or_none()
        if champion is None:
            return unavailable()
        return JSONResponse({"status": "ok", "model_version": champion.version}, headers={"X-Model-Version": champion.version})

    return app


def app_from_environment() -> FastAPI:
    """Each uvicorn worker process's app, with the settings of the FRESHREC_* environment."""
    _configure_process()
    return create_app(Settings())


def _configure_process() -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per load in the log otherwise
    # One thread per request: requests run side by side (and in several workers), so a thread
    # pool inside each would only make them wait for each other's cores.
    torch.set_num_threads(1)


def run(settings: Settings, host: str, port: int, workers: int = 1) -> int:
    """Serve until SIGINT or SIGTERM (requests in flight are finished first). ``workers``
    processes each load the champion and follow the alias on their own."""
    import uvicorn

    _configure_process()
    logger.info(
        "serving %s@%s from %s on http://%s:%d with %d worker(s); checking the alias every %g s",
        settings.registered_model_name, settings.champion_alias, redact(settings.mlflow_tracking_uri), host, port, workers,
        settings.serve_poll_seconds,
    )
    # No access log: a line per request would cost more than answering it.
    options = dict(host=host, port=port, access_log=False, timeout_graceful_shutdown=30, log_level="info")
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
    else:
        uvicorn.run("flows.serve:app_from_environment", factory=True, workers=workers, **options)
    return 0
