"""Database tables of the lab (SQLAlchemy 2 ORM). Pydantic I/O shapes live in `server.schemas`.

Times are timezone-aware UTC datetimes, except the metric and log `time` columns, which are Unix
seconds (float): they are written in bulk and compared numerically by the SSE stream and benchmarks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids for the big tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# The run columns the runs list searches and sorts by (spec values, final metrics, tags): binary JSON on
# PostgreSQL, whose values are read without re-parsing the whole document for every row (`json` is
# text: a search over 10,000 specs re-parsed each one, several times per query).
SearchJson = JSON().with_variant(JSONB(), "postgresql")



class RunState(StrEnum):
    """A run's life: `queued -> running -> succeeded | failed | cancelled`; a running run whose heartbeat
    stops is `lost` until another attempt claims it. Only `server.core.transitions` writes it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


RUN_STATES = tuple(state.value for state in RunState)
TERMINAL_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
WAITING_STATES = (RunState.QUEUED, RunState.LOST)  # a worker may claim these


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores them naive; they come back marked UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(200))
    preset: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(SearchJson)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    queue: Mapped[str] = mapped_column(String(20), default="gpu")
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    progress_done: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_total: Mapped[int] = mapped_column(BigInteger, default=0)
    # the phase the run is in (label, unit, done, total, rate, eta_s, ...: `obow.progress.PhaseClock`);
    # progress_done/progress_total are that phase's
    phase: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # bumped on every state/progress write: the SSE stream sends a `state` event when it changes
    version: Mapped[int] = mapped_column(Integer, default=0)
    metric_keys: Mapped[list[Any]] = mapped_column(JSON, default=list)
    last_metrics: Mapped[dict[str, Any]] = mapped_column(SearchJson, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(SearchJson)
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64))
    # the attempt that owns the run while it is `running` (fencing: its writes name it), else NULL
    attempt_id: Mapped[int | None] = mapped_column(Integer)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # organising (editable after launch; never read by the worker)
    tags: Mapped[list[Any]] = mapped_column(SearchJson, default=list, server_default="[]")
    note: Mapped[str] = mapped_column(Text, default="", server_default="")  # Markdown, rendered safely
    project: Mapped[str] = mapped_column(String(200), default="", server_default="", index=True)
    launched_by: Mapped[str | None] = mapped_column(String(100))  # the API token's name
    archived_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)  # set: hidden by default

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="run", order_by="Attempt.id", cascade="all, delete-orphan", passive_deletes=True
    )
    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="run", order_by="Artifact.id", cascade="all, delete-orphan", passive_deletes=True
    )


class Attempt(Base):
    """One delivery of a run to a worker process."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer, default=1)  # 1, 2, 3 ... within its run, no gaps
    worker_host: Mapped[str] = mapped_column(String(255))
    gpu: Mapped[str | None] = mapped_column(String(64))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str | None] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    # where and with what this attempt ran: package version and git commit, torch/torchvision/CUDA
    # versions, host, GPU model, the resolved spec's digest and the seed (written by the worker)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    run: Mapped[Run] = relationship(back_populates="attempts")


class RunEvent(Base):
    """One state change of a run, with its cause: the run's history, written by the same transaction
    as the change itself (`server.core.transitions`)."""

    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    transition: Mapped[str] = mapped_column(String(20))
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    attempt_id: Mapped[int | None] = mapped_column(Integer)
    cause: Mapped[str] = mapped_column(Text)


class Metric(Base):
    """One scalar point. Narrow on purpose: any key, any step, written in batches."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_key_step", "run_id", "key", "step"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)


class MetricBlock(Base):
    """Min/max/count of one key over a fixed run of steps (`level` 0: 64 steps, 1: 4096 steps), kept up
    to date at ingestion, so a downsampled read of a long series touches thousands of rows, not millions."""

    __tablename__ = "metric_blocks"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    min_step: Mapped[int] = mapped_column(BigInteger)
    max_step: Mapped[int] = mapped_column(BigInteger)
    vmin: Mapped[float] = mapped_column(Float)
    vmax: Mapped[float] = mapped_column(Float)


class LogLine(Base):
    __tablename__ = "log_lines"
    __table_args__ = (Index("ix_log_lines_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    time: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text)


class Artifact(Base):
    """A file a run produced or received. `path` is relative to ARTIFACT_ROOT and never comes from a
    request: downloads look it up here and refuse anything that resolves outside the root."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # checkpoint | export | import | result
    format: Mapped[str | None] = mapped_column(String(40))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="artifacts")


class ApiToken(Base):
    """Only the sha256 of a token is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # None: until revoked


class WebSession(Base):
    """A dashboard login, server-side: the cookie names it, so logging out (or its expiry, or revoking
    its token) ends it even for a copied cookie. Only the sha256 of its secret is stored."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WorkerBeat(Base):
    """A worker process that is alive: it refreshes `last_seen_at` every quarter lease; `/healthz`
    reports, per queue, when a worker was last seen."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery's node name
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(100))  # comma-separated
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Sweep(Base):
    """A hyper-parameter search: a base run (kind, preset, spec), a search space over dotted spec keys,
    an Optuna method and pruner, a trial budget. Its Optuna study is these rows (and `sweep_trials`):
    the controller (`server.services.sweeps.step`) rebuilds it in memory at each step."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    preset: Mapped[str | None] = mapped_column(String(200))
    base_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    space: Mapped[dict[str, Any]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(20))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    budget: Mapped[int] = mapped_column(Integer)
    parallel: Mapped[int] = mapped_column(Integer, default=1)
    objective: Mapped[dict[str, Any]] = mapped_column(JSON)
    direction: Mapped[str] = mapped_column(String(10))
    pruner: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default="running", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    best_number: Mapped[int | None] = mapped_column(Integer)
    best_value: Mapped[float | None] = mapped_column(Float)
    # which API process steps this sweep, until when (a lease renewed every step): one controller at a time
    controller: Mapped[str | None] = mapped_column(String(64))
    controller_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    trials: Mapped[list[SweepTrial]] = relationship(
        back_populates="sweep", order_by="SweepTrial.number", cascade="all, delete-orphan", passive_deletes=True
    )


class SweepTrial(Base):
    """One trial of a sweep: the params Optuna proposed, the ordinary run that trains them (and the
    evaluation child that scores it, when the objective needs one), the objective value. UNIQUE(sweep,
    number): two controllers (two API processes, a restart) can never create the same trial twice."""

    __tablename__ = "sweep_trials"
    __table_args__ = (UniqueConstraint("sweep_id", "number", name="uq_sweep_trials_sweep_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Optuna's per-trial bookkeeping (grid index, successive-halving rungs), kept so a rebuilt study
    # sees what the previous controller step saw
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    eval_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    state: Mapped[str] = mapped_column(String(20), default="running")
    value: Mapped[float | None] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    sweep: Mapped[Sweep] = relationship(back_populates="trials")
