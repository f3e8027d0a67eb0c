"""The ledger: one row per landed file, what became of it, and which model consumed it; and one
row per move of a registry alias (promotion or rollback), which is also the lock that keeps two
runs from both promoting against the same champion.

SQLAlchemy Core over any URL (SQLite by default, PostgreSQL at scale). Rows in = rows accepted
+ rows quarantined holds for every row, and a database constraint enforces it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pathlib import Path

import sqlalchemy as sa

logger = logging.getLogger(__name__)
metadata = sa.MetaData()

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("file_name", sa.String(512), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # interactions | catalog | other (an ignored entry)
    # received | accepted | partially_accepted | quarantined (every row, nothing accepted) | rejected |
    # duplicate (the content of an earlier file) | ignored (not processed: the reason says why)
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("rows_in", sa.Integer, nullable=False, default=0),
    sa.Column("rows_accepted", sa.Integer, nullable=False, default=0),
    sa.Column("rows_quarantined", sa.Integer, nullable=False, default=0),
    sa.Column("reasons", sa.Text, nullable=False, default=""),
    sa.Column("accepted_path", sa.Text, nullable=True),
    sa.Column("quarantine_path", sa.Text, nullable=True),
    sa.Column("report_path", sa.Text, nullable=True),
    sa.Column("min_event_time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("max_event_time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("consumed_by_version", sa.String(32), nullable=True),
    # What continuous training decided: skip | update (claimed, a run is working on it) | trained (the
    # update ran to its end; consumed_by_version names the version if it was promoted) | failed (the
    # last attempt failed: a later run tries again) | parked (given up, see update_error)
    sa.Column("decision", sa.String(16), nullable=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    # Updates attempted on this batch; the run holding the claim renews lease_until while it works,
    # so a claim whose run was killed expires and a later run resumes the batch.
    sa.Column("update_attempts", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("update_error", sa.Text, nullable=True),
    sa.CheckConstraint("rows_in = rows_accepted + rows_quarantined", name="rows_balance"),
)
# A file is registered once, even when two runs find it at the same moment. An index, not a table
# constraint, so `connect` can add it to a ledger created before it existed.
one_record_per_file = sa.Index("one_record_per_file", batches.c.file_name, batches.c.sha256, unique=True)


# Every move of a registry alias, in order. ``seq`` numbers the moves of one (model, alias) and is
# unique: a run that wants to move the alias inserts the next number after the move it saw, so of
# two runs that saw the same champion only the first insert succeeds (optimistic locking).
alias_moves = sa.Table(
    "alias_moves",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # promote | rollback
    sa.Column("from_version", sa.String(32), nullable=True),  # None: the first champion
    sa.Column("to_version", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),  # the run that trained to_version
    sa.Column("flow_run_id", sa.String(64), nullable=True),  # the Prefect flow run that moved it
    sa.UniqueConstraint("model_name", "alias", "seq", name="one_move_per_seq"),
)


@dataclass(frozen=True)
class AliasMove:
    id: int
    model_name: str
    alias: str
    seq: int
    moved_at: datetime
    action: str
    from_version: str | None
    to_version: str
    reason: str
    mlflow_run_id: str | None
    flow_run_id: str | None


@dataclass(frozen=True)
class BatchRecord:
    id: int
    file_name: str
    sha256: str
    kind: str
    status: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    reasons: str
    accepted_path: str | None
    quarantine_path: str | None
    consumed_by_version: str | None
    report_path: str | None = None
    decision: str | None = None
    min_event_time: datetime | None = None
    max_event_time: datetime | None = None
    size_bytes: int = 0
    update_attempts: int = 0
    lease_until: datetime | None = None
    update_error: str | None = None


# One engine per ledger and process: the tables, index and columns are checked once, not at
# every call (keyed by process too: an engine never crosses a fork).
_ENGINES: dict[tuple[str, int], sa.Engine] = {}
_ENGINES_LOCK = threading.Lock()


def connect(url: str) -> sa.Engine:
    """The ledger at ``url``, its tables created on first use. Opened once per process: later
    calls return the same engine (its connection pool), unless a SQLite file it opened is gone."""
    key = (url, os.getpid())
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None and (path is None or path.exists()):
            return engine
        if engine is not None:  # its file was removed (a reset home): start a new one
            engine.dispose()
        _ENGINES[key] = engine = _open(url, path)
        return engine


def _open(url: str, path: Path | None) -> sa.Engine:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    try:
        metadata.create_all(engine)
    except sa.exc.DatabaseError:  # another process created the tables between check and create
        metadata.create_all(engine)
    try:
        one_record_per_file.create(engine, checkfirst=True)  # a ledger from before the index
    except sa.exc.IntegrityError:
        logger.warning(
            "the ledger at %s records some file twice (a race of an older version): two runs at once may "
            "register a file twice until the duplicate rows are resolved", engine.url.render_as_string(hide_password=True),
        )
    except sa.exc.DatabaseError:  # another process created the index between check and create
        pass
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: sa.Engine) -> None:
    """Columns added to ``batches`` after a ledger was created are added to it (all nullable or
    with a server default, so old rows stay valid)."""
    present = {column["name"] for column in sa.inspect(engine).get_columns("batches")}
    for column in batches.columns:
        if column.name in present:
            continue
        kind = column.type.compile(engine.dialect)
        default = f" DEFAULT {column.server_default.arg}" if column.server_default is not None else ""
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'ALTER TABLE batches ADD COLUMN {column.name} {kind}{default}'))
        except sa.exc.DatabaseError:  # another process added it first
            pass


def find_by_hash(engine: sa.Engine, sha256: str) -> BatchRecord | None:
    """The first record of this content that was processed (not a duplicate, not ignored), if any."""
    query = (
        sa.select(batches)
        .where(batches.c.sha256 == sha256, batches.c.status.not_in(("duplicate", "ignored")))
        .order_by(batches.c.id)
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return _record(row) if row else None


def record_received(engine: sa.Engine, file_name: str, sha256: str, size_bytes: int, kind: str, status: str = "received", reasons: str = "") -> int | None:
    """Register a landed file; None when another run registered the same file first."""
    try:
        with engine.begin() as conn:
            result = conn.execute(
                batches.insert().values(
                    file_name=file_name,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    received_at=datetime.now(timezone.utc),
                    kind=kind,
                    status=status,
                    rows_in=0,
                    rows_accepted=0,
                    rows_quarantined=0,
                    reasons=reasons,
                )
            )
    except sa.exc.IntegrityError:
        return None
    return int(result.inserted_primary_key[0])


def batch(engine: sa.Engine, batch_id: int) -> BatchRecord | None:
    found = _batches_where(engine, batches.c.id == batch_id)
    return found[0] if found else None


def reopen_ignored(engine: sa.Engine, batch_id: int) -> bool:
    """Make an ignored record of real content (a file that changed while it was read) received
    again, to be validated now; False when another run reopened it first."""
    with engine.begin() as conn:
        result = conn.execute(
            batches.update().where(batches.c.id == batch_id, batches.c.status == "ignored", batches.c.sha256 != "")
            .values(status="received", reasons="")
        )
    return result.rowcount == 1


def record_outcome(
    engine: sa.Engine,
    batch_id: int,
    status: str,
    rows_in: int,
    rows_accepted: int,
    rows_quarantined: int,
    reasons: str,
    accepted_path: str | None,
    quarantine_path: str | None,
    min_event_time: datetime | None,
    max_event_time: datetime | None,
    report_path: str | None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            batches.update()
            .where(batches.c.id == batch_id)
            .values(
                status=status,
                rows_in=rows_in,
                rows_accepted=rows_accepted,
                rows_quarantined=rows_quarantined,
                reasons=reasons,
                accepted_path=accepted_path,
                quarantine_path=quarantine_path,
                min_event_time=min_event_time,
                max_event_time=max_event_time,
                report_path=report_path,
            )
        )


def _batches_where(engine: sa.Engine, *conditions) -> list[BatchRecord]:
    with engine.connect() as conn:
        query = sa.select(batches).where(*conditions).order_by(batches.c.id)
        return [_record(row) for row in conn.execute(query).mappings()]


# Interaction batches with rows to train on that no model version has been trained on yet.
_PENDING = (
    batches.c.kind == "interactions",
    batches.c.status.in_(("accepted", "partially_accepted")),
    batches.c.rows_accepted > 0,
    batches.c.consumed_by_version.is_(None),
)
# Of those, the ones whose rows an update may train on: not decided yet, skipped, or trained on by
# a challenger that was not promoted. Not: a batch another run is updating (or was, until it was
# killed: it is resumed in its own right), one whose update failed or was parked.
_TRAINABLE = sa.or_(batches.c.decision.is_(None), batches.c.decision.in_(("skip", "trained")))


def unconsumed_batches(engine: sa.Engine, through_batch_id: int | None = None) -> list[BatchRecord]:
    """Accepted interaction batches no model version has been trained on yet and whose rows an
    update may use, oldest first; with ``through_batch_id``, only those up to that batch (later
    ones are the future), that batch itself whatever its decision."""
    if through_batch_id is None:
        return _batches_where(engine, *_PENDING, _TRAINABLE)
    return _batches_where(engine, *_PENDING, batches.c.id <= through_batch_id, sa.or_(_TRAINABLE, batches.c.id == through_batch_id))


def _open_to(now: datetime):
    """A batch a run may claim now: undecided, or claimed for an update by a run that has stopped
    renewing its lease (killed), or whose last update attempt failed."""
    lapsed = sa.or_(batches.c.lease_until.is_(None), batches.c.lease_until < now)
    return sa.or_(batches.c.decision.is_(None), sa.and_(batches.c.decision.in_(("update", "failed")), lapsed))


def undecided_batches(engine: sa.Engine, max_attempts: int | None = None) -> list[BatchRecord]:
    """Accepted interaction batches waiting for an update decision, oldest first: left by a
    cut-off bootstrap or a run that stopped after validation, and those whose update a run began
    and did not finish (killed) or that failed, to be tried again. With ``max_attempts``, such a
    batch that has used its attempts is parked first (`park_exhausted`) and not returned."""
    now = datetime.now(timezone.utc)
    if max_attempts is not None:
        park_exhausted(engine, max_attempts, now)
    return _batches_where(engine, *_PENDING, _open_to(now))


def park_exhausted(engine: sa.Engine, max_attempts: int, now: datetime) -> None:
    """Park the batches whose update was attempted ``max_attempts`` times without an end."""
    with engine.begin() as conn:
        stale = conn.execute(
            sa.select(batches.c.id, batches.c.update_attempts, batches.c.update_error)
            .where(*_PENDING, _open_to(now), batches.c.decision.is_not(None), batches.c.update_attempts >= max_attempts)
        ).all()
        for batch_id, attempts, error in stale:
            last = error or "the run working on it stopped without recording an outcome (killed, or out of memory)"
            conn.execute(
                batches.update().where(batches.c.id == batch_id)
                .values(decision="parked", lease_until=None, update_error=f"gave up after {attempts} attempts; the last: {last}")
            )


def record_decision(engine: sa.Engine, batch_id: int, decision: str, lease_seconds: float = 1800) -> bool:
    """Claim the batch's update decision: on a batch not decided yet, or one whose update a run
    began and abandoned (lease lapsed) or that failed. An ``update`` claim counts an attempt and
    holds a lease of ``lease_seconds``, which `renew_lease` extends while the run works. False
    when another run holds the claim (that run, not this one, trains on it)."""
    now = datetime.now(timezone.utc)
    update = decision == "update"
    with engine.begin() as conn:
        result = conn.execute(
            batches.update()
            .where(batches.c.id == batch_id, batches.c.consumed_by_version.is_(None), _open_to(now))
            .values(
                decision=decision,
                decided_at=now,
                lease_until=now + timedelta(seconds=lease_seconds) if update else None,
                update_attempts=batches.c.update_attempts + (1 if update else 0),
            )
        )
    return result.rowcount == 1


def renew_lease(engine: sa.Engine, batch_ids: list[int], lease_seconds: float) -> None:
    """Extend the update claims on these batches: the run holding them is still working."""
    with engine.begin() as conn:
        conn.execute(
            batches.update()
            .where(batches.c.id.in_(batch_ids), batches.c.decision == "update", batches.c.consumed_by_version.is_(None))
            .values(lease_until=datetime.now(timezone.utc) + timedelta(seconds=lease_seconds))
        )


def finish_update(engine: sa.Engine, batch_id: int) -> None:
    """The update on this batch ran to its end (promoted or not): its claim is released, and its
    rows, unless a promotion consumed them, wait for the next update like a skipped batch's."""
    with engine.begin() as conn:
        conn.execute(
            batches.update().where(batches.c.id == batch_id, batches.c.decision == "update")
            .values(decision="trained", lease_until=None, update_error=None)
        )


def record_update_failure(engine: sa.Engine, batch_id: int, error: str, max_attempts: int, charge: bool = True) -> str:
    """The update on this batch failed with ``error``: ``failed`` (a later run tries again) or,
    after ``max_attempts`` attempts, ``parked``. With ``charge`` False the attempt is not
    counted (the pipeline, not the batch, failed). Returns the decision recorded."""
    with engine.begin() as conn:
        attempts, claimed = conn.execute(sa.select(batches.c.update_attempts, batches.c.decision).where(batches.c.id == batch_id)).one()
        # An update claim counted its attempt already; a failure before the claim counts here.
        if charge and claimed != "update":
            attempts += 1
        elif not charge and claimed == "update":
            attempts = max(0, attempts - 1)
        decision = "parked" if attempts >= max_attempts else "failed"
        conn.execute(
            batches.update().where(batches.c.id == batch_id, batches.c.consumed_by_version.is_(None))
            .values(decision=decision, lease_until=None, update_attempts=attempts, update_error=error)
        )
    return decision


def retry_batch(engine: sa.Engine, batch_id: int) -> bool:
    """Give a parked or failed batch fresh attempts (after a person fixed the cause)."""
    with engine.begin() as conn:
        result = conn.execute(
            batches.update().where(batches.c.id == batch_id, batches.c.decision.in_(("parked", "failed")))
            .values(decision=None, lease_until=None, update_attempts=0)
        )
    return result.rowcount == 1


def consumed_batches(engine: sa.Engine) -> list[BatchRecord]:
    """Accepted interaction batches some model version was trained on, oldest first."""
    return _batches_where(engine, batches.c.kind == "interactions", batches.c.consumed_by_version.is_not(None))


def mark_consumed(engine: sa.Engine, batch_ids: list[int], model_version: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            batches.update().where(batches.c.id.in_(batch_ids)).values(consumed_by_version=model_version)
        )


def all_batches(engine: sa.Engine) -> list[BatchRecord]:
    return _batches_where(engine)


def _record(row: sa.RowMapping) -> BatchRecord:
    values = {field: row[field] for field in BatchRecord.__dataclass_fields__}
    for field in ("min_event_time", "max_event_time", "lease_until"):
        values[field] = _as_utc(values[field])
    return BatchRecord(**values)


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL hands back aware ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def latest_move(engine: sa.Engine, model_name: str, alias: str) -> AliasMove | None:
    query = (
        sa.select(alias_moves)
        .where(alias_moves.c.model_name == model_name, alias_moves.c.alias == alias)
        .order_by(alias_moves.c.seq.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return _move(row) if row else None


def claim_move(
    engine: sa.Engine,
    model_name: str,
    alias: str,
    expected_from: str | None,
    to_version: str,
    action: str,
    reason: str,
    mlflow_run_id: str | None = None,
    flow_run_id: str | None = None,
    consumed_batch_ids: list[int] | None = None,
) -> AliasMove | None:
    """Record that ``alias`` moves from ``expected_from`` to ``to_version``, if the last recorded
    move left it at ``expected_from`` (or none is recorded); None when another run moved it
    first. In the same transaction the batches ``consumed_batch_ids`` are marked consumed by
    ``to_version``: a promotion and the data it was trained on are recorded together or not at
    all. Call it before moving the alias in the registry: from then on the move is the ledger's
    word, and the registry follows it (tasks/registry.py `apply_move`, now or in the next run's
    `reconcile`)."""
    last = latest_move(engine, model_name, alias)
    if last is not None and last.to_version != expected_from:
        return None
    values = dict(
        model_name=model_name, alias=alias, seq=(last.seq if last else 0) + 1, moved_at=datetime.now(timezone.utc),
        action=action, from_version=expected_from, to_version=to_version, reason=reason,
        mlflow_run_id=mlflow_run_id, flow_run_id=flow_run_id,
    )
    try:
        with engine.begin() as conn:
            move_id = conn.execute(alias_moves.insert().values(**values)).inserted_primary_key[0]
            if consumed_batch_ids:
                conn.execute(
                    batches.update().where(batches.c.id.in_(consumed_batch_ids)).values(consumed_by_version=to_version)
                )
    except sa.exc.IntegrityError:  # a concurrent run inserted the same seq first
        return None
    return AliasMove(id=int(move_id), **values)


def release_move(engine: sa.Engine, move_id: int) -> None:
    """Undo a recorded move whose version the registry does not have, so the trail never names a
    move that cannot happen. A promotion's batches are released with it (consumed by no version
    again: the next update trains on them); a version is promoted once, so the batches consumed
    by a promotion's version are exactly the ones its claim marked."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(alias_moves).where(alias_moves.c.id == move_id)).mappings().first()
        if row is None:
            return
        conn.execute(alias_moves.delete().where(alias_moves.c.id == move_id))
        if row["action"] == "promote":
            conn.execute(
                batches.update().where(batches.c.consumed_by_version == row["to_version"]).values(consumed_by_version=None)
            )


def moves(engine: sa.Engine, model_name: str | None = None) -> list[AliasMove]:
    """Every recorded alias move, oldest first."""
    query = sa.select(alias_moves).order_by(alias_moves.c.id)
    if model_name is not None:
        query = query.where(alias_moves.c.model_name == model_name)
    with engine.connect() as conn:
        return [_move(row) for row in conn.execute(query).mappings()]


def _move(row: sa.RowMapping) -> AliasMove:
    values = {name: row[name] for name in AliasMove.__dataclass_fields__}
    values["moved_at"] = _as_utc(values["moved_at"])
    return AliasMove(**values)
