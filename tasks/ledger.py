"""The ledger: one row per landed file, what became of it, and which model consumed it; and one
row per move of a registry alias (promotion or rollback), which is also the lock that keeps two
runs from both promoting against the same champion.

SQLAlchemy Core over any URL (SQLite by default, PostgreSQL at scale). Rows in = rows accepted
+ rows quarantined holds for every row, and a database constraint enforces it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

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
    sa.Column("kind", sa.String(32), nullable=False),  # interactions | catalog
    sa.Column("status", sa.String(32), nullable=False),  # received | accepted | partially_accepted | rejected | duplicate
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
    sa.Column("decision", sa.String(16), nullable=True),  # update | skip: what continuous training decided
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
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


def connect(url: str) -> sa.Engine:
    """Open the ledger, creating its tables on first use."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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
    return engine


def find_by_hash(engine: sa.Engine, sha256: str) -> BatchRecord | None:
    """The first non-duplicate record of this content, if any."""
    query = (
        sa.select(batches)
        .where(batches.c.sha256 == sha256, batches.c.status != "duplicate")
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
    batches.c.consumed_by_version.is_(None),
)


def unconsumed_batches(engine: sa.Engine, through_batch_id: int | None = None) -> list[BatchRecord]:
    """Accepted interaction batches no model version has been trained on yet, oldest first;
    with ``through_batch_id``, only those up to that batch (later ones are the future)."""
    limit = () if through_batch_id is None else (batches.c.id <= through_batch_id,)
    return _batches_where(engine, *_PENDING, *limit)


def undecided_batches(engine: sa.Engine) -> list[BatchRecord]:
    """Accepted interaction batches waiting for an update decision (left by a cut-off bootstrap
    or by a run that stopped after validation), oldest first."""
    return _batches_where(engine, *_PENDING, batches.c.decision.is_(None))


def record_decision(engine: sa.Engine, batch_id: int, decision: str) -> bool:
    """Record the update decision on a batch not decided yet; False when another run decided it
    first (that run, not this one, trains on it)."""
    with engine.begin() as conn:
        result = conn.execute(
            batches.update()
            .where(batches.c.id == batch_id, batches.c.decision.is_(None))
            .values(decision=decision, decided_at=datetime.now(timezone.utc))
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
    for field in ("min_event_time", "max_event_time"):
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
) -> AliasMove | None:
    """Record that ``alias`` moves from ``expected_from`` to ``to_version``, if the last recorded
    move left it at ``expected_from`` (or none is recorded); None when another run moved it
    first. Call it before moving the alias in the registry, and `release_move` if that fails."""
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
    except sa.exc.IntegrityError:  # a concurrent run inserted the same seq first
        return None
    return AliasMove(id=int(move_id), **values)


def release_move(engine: sa.Engine, move_id: int) -> None:
    """Undo a claim whose registry move failed, so the trail never names a move that did not happen."""
    with engine.begin() as conn:
        conn.execute(alias_moves.delete().where(alias_moves.c.id == move_id))


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
