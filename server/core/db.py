"""Engine, sessions and the migration check shared by the API, the workers and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from server.core.resources import lab_dir

MIGRATIONS_DIR = lab_dir("migrations")


class DatabaseNotMigrated(RuntimeError):
    """The database schema is missing or older than this code."""


# The API runs its sync routes and SSE polls on anyio's threadpool (40 threads), each holding a
# connection while it runs. SQLAlchemy's default pool keeps 5 and closes any overflow connection on
# return, so under load the API opened a new PostgreSQL connection (a forked backend, ~10 ms of CPU on
# both sides) for most requests; 20 kept plus 20 more covers the threadpool. Workers use one or two, and
# a pool only opens what is asked for.
PG_POOL_SIZE = 20


def _load_json(text: str) -> Any:
    """A JSON column's value, or None when what is stored is not JSON (written by hand or by another
    program): the row then reads with an empty value instead of failing every query that touches it."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def make_engine(url: str, pool_size: int | None = None, **kwargs) -> Engine:
    """`pool_size` (PostgreSQL only): connections kept open; as many again (at least SQLAlchemy's default
    10) may be opened for a burst."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, json_deserializer=_load_json, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # API and worker processes share the file
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # SQLite stores whatever bytes it is given; one row with invalid UTF-8 in a text column (written
            # by another program, or by hand) would make every query that reads it raise, taking a whole
            # list down. Such bytes read as U+FFFD instead.
            dbapi_conn.text_factory = _decode_text

        return engine
    if "poolclass" not in kwargs:  # migrations use no pool
        size = pool_size or PG_POOL_SIZE
        kwargs.update(pool_size=size, max_overflow=max(size, 10))
    return create_engine(url, pool_pre_ping=True, json_deserializer=_load_json, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_migrated(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseNotMigrated(
            f"database {where} is at revision {current or 'none (empty)'}, this code needs {head}: "
            "run `obow lab db upgrade` first"
        )
