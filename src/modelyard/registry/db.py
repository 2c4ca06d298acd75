"""Engines, write transactions and migrations for the registry database (SQLite or Postgres).

SQLite is the embedded default: one file, WAL so readers never wait for the writer, a 30 s busy timeout,
foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE``. The last matters under
concurrency: a deferred transaction that reads and then writes cannot wait for a lock another process
holds (SQLite fails it at once with "database is locked"); an immediate one takes the write lock first
and waits its turn. Postgres is reached through psycopg 3 whatever the URL spells.

Migrations are Alembic scripts shipped inside the package and applied in code (no alembic.ini): on start
by the Registry and by `modelyard db upgrade`. Concurrent upgraders serialise on a lock.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from modelyard.errors import InvalidInput, ModelyardError, database_reason

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The newest migration in MIGRATIONS_DIR (a test checks it against Alembic's own reading). A database
# already there is recognised without importing Alembic, which most commands and pipeline tasks never need.
SCHEMA_HEAD = "0008"
SQLITE_BUSY_TIMEOUT_S = 30.0
SQLITE_PAGE_SIZE = 16384
# Execution option marking a connection whose transaction will write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "modelyard_write"
# pg_advisory_xact_lock key held while migrating, so two pods starting at once do not both migrate.
MIGRATION_LOCK_KEY = 0x6D6F64656C79  # "modely"

_POSTGRES_DRIVERS = {"postgres", "postgresql", "postgresql+psycopg"}
_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL, pin Postgres to psycopg 3, and refuse what the registry cannot run on."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(
            f"invalid database URL {redact(url)!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    if parsed.drivername in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in _SQLITE_DRIVERS:
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed):
            raise InvalidInput(
                "an in-memory SQLite database cannot hold the registry (every connection would see its "
                "own empty database); use sqlite:///PATH/TO/modelyard.db"
            )
        return parsed
    raise InvalidInput(
        f"unsupported database URL {redact(parsed)!r}: the registry runs on sqlite:///PATH or "
        "postgresql://USER@HOST/DB (psycopg 3)"
    )


def create_engine_for(url: str | URL, *, json_serializer: Callable[[Any], str] | None = None) -> Engine:
    """An Engine for the registry: SQLite (folder created, WAL, busy timeout, FKs) or Postgres (psycopg 3).

    ``json_serializer`` writes its JSON columns (default: ``json.dumps``).
    """
    parsed = normalize_url(url)
    options: dict[str, Any] = {} if json_serializer is None else {"json_serializer": json_serializer}
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, **options)

    database = Path(parsed.database or "")
    if not str(database).startswith("file:"):
        database.expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, **options)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below instead of the sqlite3 module's own
        # implicit BEGIN, which cannot ask for an IMMEDIATE transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # Taken only by a database not yet written: the prediction log's packed columns span fewer
        # overflow pages, which costs SQLite less CPU per request than 4 KiB pages.
        cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable with WAL except on power loss
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        writes = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


def _use_wal(cursor: Any) -> None:
    """Put the database in WAL mode (it stays so: later connections only read the mode).

    Switching needs the database to itself and SQLite answers "database is locked" at once rather than
    waiting the busy timeout, so connections racing to open a new database retry until that timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A Session whose transaction will write: commit on success, roll back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        session.connection(execution_options={WRITE_OPTION: True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


# ---------------------------------------------------------------- migrations


def _alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this version of modelyard ships, as Alembic reads it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "the registry ships no migrations"
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        revisions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(revisions) > 1:
        raise ModelyardError(
            f"the registry database {redact(engine.url)} is at several schema revisions at once "
            f"({', '.join(sorted(revisions))}): its alembic_version table was edited by hand"
        )
    return revisions[0] if revisions else None


def ensure_schema(engine: Engine) -> str:
    """Apply any pending migrations to the engine's database; return the head revision."""
    try:
        current = current_revision(engine)
        if current == SCHEMA_HEAD:
            return SCHEMA_HEAD
        from alembic import command
        from alembic.script import ScriptDirectory

        head = head_revision()
        scripts = ScriptDirectory.from_config(_alembic_config())
        known = {script.revision for script in scripts.walk_revisions()}
        if current is not None and current not in known:
            raise ModelyardError(
                f"the registry database {redact(engine.url)} is at schema revision {current!r}, which this "
                f"version of modelyard does not know (it ships up to {head!r}): upgrade modelyard"
            )
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    lock = text("SELECT pg_advisory_xact_lock(:key)")
                    connection.execute(lock, {"key": MIGRATION_LOCK_KEY})
                # Alembic reads the current revision again under the lock, so a concurrent upgrader that
                # got there first leaves nothing to do.
                command.upgrade(_alembic_config(connection), "head")
    except OperationalError as exc:
        raise ModelyardError(
            f"cannot migrate the registry database {redact(engine.url)}: {database_reason(exc)}"
        ) from exc
    logger.info("registry schema of %s upgraded from %s to %s", redact(engine.url), current, head)
    return head


def upgrade(url: str | URL) -> str:
    """Create or upgrade the registry schema at ``url``; return the head revision.

    This is what `modelyard db upgrade` runs; the Registry also does it when it starts.
    """
    engine = create_engine_for(url)
    try:
        return ensure_schema(engine)
    finally:
        engine.dispose()
