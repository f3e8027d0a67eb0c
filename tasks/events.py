"""The Prefect events freshrec emits, for automations to act on (docs/events.md).

Every event names its resource (a landing file, or the registered model) and carries a small
JSON payload. Text that comes from the data (file names, reasons) is put on one line and cut to
a bounded length here, so an event stays small whatever a producer names a file. Sending never
fails a run: an event that cannot be sent is a logged warning.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.settings import PREFECT_API_URL

from data_checks.markup import plain_text

BATCH_LANDED = "freshrec.batch.landed"
BATCH_REJECTED = "freshrec.batch.rejected"
MODEL_PROMOTED = "freshrec.model.promoted"
MODEL_ROLLED_BACK = "freshrec.model.rolled-back"
LANDING_RESOURCE_PREFIX = "freshrec.landing."
MODEL_RESOURCE_PREFIX = "freshrec.model."
MAX_NAME_CHARS = 200  # a file or model name in a resource id or a payload
MAX_REASON_CHARS = 1000  # a rejection's or a rollback's reasons
logger = logging.getLogger(__name__)


def event_text(value: object, limit: int) -> str:
    """``value`` on one line (control characters escaped), cut to ``limit`` characters."""
    text = plain_text(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def landing_resource(file_name: str) -> dict[str, str]:
    """A landing file as an event's resource: ``freshrec.landing.<file name>``."""
    name = event_text(file_name, MAX_NAME_CHARS)
    return {"prefect.resource.id": LANDING_RESOURCE_PREFIX + name, "prefect.resource.name": name}


def model_resource(model_name: str) -> dict[str, str]:
    """The registered model as an event's resource: ``freshrec.model.<registered model name>``."""
    name = event_text(model_name, MAX_NAME_CHARS)
    return {"prefect.resource.id": MODEL_RESOURCE_PREFIX + name, "prefect.resource.name": name}


def model_version_related(model_name: str, version: str, role: str = "model-version") -> dict[str, str]:
    name = event_text(model_name, MAX_NAME_CHARS)
    return {
        "prefect.resource.id": f"freshrec.model-version.{name}.{version}",
        "prefect.resource.name": f"{name} version {version}",
        "prefect.resource.role": role,
    }


def api_configured() -> bool:
    """A Prefect API to send to (PREFECT_API_URL). Without one, Prefect would start a temporary
    server only to record the event: the command line then sends none."""
    return bool(PREFECT_API_URL.value())


def emit(event: str, resource: dict[str, str], payload: dict[str, Any], related: list[dict[str, str]] | None = None) -> bool:
    """Send ``event``; False, with a warning logged, when it cannot be sent. Inside a flow or task
    run Prefect adds the run, its flow, deployment and tags as related resources; in a subflow
    the flow run that started it all is added too (role ``root-flow-run``)."""
    related = [*(related or []), *_root_flow_run()]
    try:
        sent = emit_event(event, resource=resource, payload=payload, related=related or None)
    except Exception as error:  # too large, or a resource Prefect refuses: the run goes on
        _log().warning("event %s was not sent: %s: %s", event, type(error).__name__, error)
        return False
    if sent is None:
        _log().warning("event %s was not sent: Prefect has no events client here (see Prefect's log)", event)
    return sent is not None


def _root_flow_run() -> list[dict[str, str]]:
    """The top flow run of the subflow this code runs in, as a related resource; none outside a
    subflow (or when the API cannot say)."""
    from prefect.runtime import flow_run

    try:
        current, parent = flow_run.id, flow_run.parent_flow_run_id
        root = flow_run.root_flow_run_id if current and parent else None
    except Exception:  # the API is down: the event goes without it
        return []
    if not root or root == current:
        return []
    return [{"prefect.resource.id": f"prefect.flow-run.{root}", "prefect.resource.role": "root-flow-run"}]


def _log() -> logging.Logger:
    try:
        return get_run_logger()
    except MissingContextError:  # outside a run: the command line
        return logger


def batch_landed(file_name: str, size_bytes: int, sha256: str, landing_dir: str) -> bool:
    """A whole file is in landing/ (`python -m flows land`): the continuous-training
    deployment's trigger starts a run on it."""
    name = event_text(file_name, MAX_NAME_CHARS)
    payload = {"file_name": name, "bytes": size_bytes, "sha256": sha256, "landing_dir": event_text(landing_dir, MAX_REASON_CHARS)}
    return emit(BATCH_LANDED, landing_resource(file_name), payload)


def batch_rejected(file_name: str, batch_id: int, sha256: str, rows: int, reasons: list[str]) -> bool:
    """Validation rejected a landing file whole: nothing of it is trained on until a fixed file lands."""
    payload = {
        "file_name": event_text(file_name, MAX_NAME_CHARS), "batch_id": batch_id, "sha256": sha256, "rows": rows,
        "reason": event_text("; ".join(reasons), MAX_REASON_CHARS),
    }
    return emit(BATCH_REJECTED, landing_resource(file_name), payload)


def model_promoted(
    model_name: str, alias: str, version: str, previous_version: str | None, run_id: str, batch_file: str | None,
    batches: int, k: int, challenger_recall: float, champion_recall: float | None,
) -> bool:
    """A new version is the champion; ``previous_version`` is None for the first one. The recalls
    are Recall@k of the challenger (now champion) and of the champion it replaced, on the newest
    slice of held-out data."""
    payload = {
        "registered_model": event_text(model_name, MAX_NAME_CHARS), "alias": alias, "version": version,
        "previous_version": previous_version, "run_id": run_id,
        "batch_file": event_text(batch_file, MAX_NAME_CHARS) if batch_file is not None else None, "batches": batches,
        "k": k, "challenger_recall": challenger_recall, "champion_recall": champion_recall,
    }
    related = [model_version_related(model_name, version)]
    if batch_file is not None:
        related.append({**landing_resource(batch_file), "prefect.resource.role": "batch"})
    return emit(MODEL_PROMOTED, model_resource(model_name), payload, related)


def model_rolled_back(model_name: str, alias: str, from_version: str | None, to_version: str, reason: str, run_id: str | None) -> bool:
    """The champion alias moved back, by hand, for ``reason``."""
    payload = {
        "registered_model": event_text(model_name, MAX_NAME_CHARS), "alias": alias, "from_version": from_version,
        "to_version": to_version, "reason": event_text(reason, MAX_REASON_CHARS), "run_id": run_id,
    }
    related = [model_version_related(model_name, to_version)]
    if from_version is not None:
        related.append(model_version_related(model_name, from_version, "rolled-back-from"))
    return emit(MODEL_ROLLED_BACK, model_resource(model_name), payload, related)
