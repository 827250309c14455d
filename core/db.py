"""Engine and session factory: SQLite (WAL) embedded, PostgreSQL in production.

The model zone gets its engine from a URL alone (``Database(url=..., model_zone=True)``):
it holds no settings object (core.settings is imported here for type checking only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from core.revision import VERSION_QUERY, is_head
from core.zones import sqlite_authorizer

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["MIGRATIONS", "READ_ONLY", "Database", "make_engine", "migrate"]

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK_KEY = 0x51DECA7  # arbitrary, fixed: the advisory lock for schema upgrades
READ_ONLY = "sidecar_read_only"  # execution option of Database.reads sessions


def make_engine(url: str, *, model_zone: bool = False) -> Engine:
    """``model_zone``: every connection limited to core.zones.MODEL_ZONE (on SQLite by an
    authorizer; on PostgreSQL the URL's role carries the same rule as grants)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30, "isolation_level": None},
            pool_size=8,
            max_overflow=8,
        )
        _configure_sqlite(engine)
        if model_zone:
            _limit_to_model_zone(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: the commit is fsync'd before we ACK, which is the whole promise.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: read-then-write transactions (audit
        # head, resource versions) can then never fail with SQLITE_BUSY_SNAPSHOT midway.
        # Sessions from Database.reads only read: they must not queue for the one write
        # lock (a polling reader held it between every batch of the pipeline's writers).
        deferred = conn.get_execution_options().get(READ_ONLY)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def _limit_to_model_zone(engine: Engine) -> None:
    """The model zone's connections to the one SQLite file may do only what the allow-list
    allows (the same table and column rule as the PostgreSQL grants): SQLite consults the
    authorizer while preparing every statement, and it refuses identified tables and columns,
    ATTACH, PRAGMA, DELETE and schema changes. Not a second database file for the identified
    zone: the pipeline writes identified and de-identified rows in one transaction, and a
    transaction across ATTACHed files is not atomic in WAL mode
    (https://www.sqlite.org/lang_attach.html, https://www.sqlite.org/wal.html)."""

    # Registered after _configure_sqlite's listener, so its PRAGMAs run first.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.set_authorizer(sqlite_authorizer())


def is_current(engine: Engine) -> bool:
    """Whether the schema is already at ``head_revision()``."""
    try:
        with engine.connect() as conn:
            found = conn.execute(text(VERSION_QUERY)).scalars().all()
    except DBAPIError:  # no table yet (a new database), or none reachable: let Alembic say
        return False
    return is_head(found)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent). Alembic (a quarter of a
    second to import and read its scripts) is loaded only when there is something to do."""
    if is_current(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # serve, worker and sandbox may start together: one migrates, the others wait
            # and then find nothing to do (the lock ends with this transaction).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


class Database:
    """Engine + session factory for one settings object, or for one URL."""

    def __init__(
        self, settings: Settings | None = None, *, url: str | None = None, model_zone: bool = False
    ) -> None:
        """``url``: connect as someone else than settings.database_url (the model zone's role).
        ``model_zone``: limited to what core.zones allows the model zone (see make_engine)."""
        if url is None:
            if settings is None:
                raise ValueError("Database needs settings or a URL")
            url = settings.effective_database_url
        self.url = url
        self.engine = make_engine(self.url, model_zone=model_zone)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # For sessions that only read: on SQLite a plain (deferred) BEGIN, which reads a
        # snapshot beside the writer instead of waiting for the write lock. A write in one
        # of these fails; use ``sessions`` or ``transaction`` for anything that writes.
        self.reads = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
