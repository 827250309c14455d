"""Counts for operators and tooling (`sidecar stats --json`, `GET /status`). Keys are a
contract, documented in docs/operations.md: add keys, never rename them.

Plain SQL over whichever connection is at hand: SQLAlchemy's in `serve` (``collect``), or a
bare sqlite3 or psycopg connection in `sidecar stats` (``collect_from_url``), which then
answers without loading the ORM. Each WHERE clause matches its partial index (migrations 0012,
0015 and 0021) word for word, so the counts come from indexes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connectors.journal_file import journal_id_of, pending_in_journal
from core.revision import VERSION_QUERY, is_head
from core.statuses import PENDING_EVENTS_WHERE, AppAckStatus, InboxStatus, JobStatus
from mapping.ids import MESSAGE_SCOPE_AUTHORITY

if TYPE_CHECKING:
    from core.db import Database

__all__ = ["UNLINKED_WHERE", "StatusCounts", "collect", "collect_from_url", "counts"]

# A literal, not a bound parameter: SQLite uses a partial index only for a WHERE it can see.
UNLINKED_WHERE = f"authority = '{MESSAGE_SCOPE_AUTHORITY}'"
_JOURNAL_ID = re.compile(r"^[0-9a-fA-F-]{1,36}$")

Rows = Callable[[str], Sequence[Sequence[Any]]]
RESOURCES_BY_TYPE = (
    "SELECT resource_type, count(*) FROM resources GROUP BY resource_type ORDER BY resource_type"
)


# Every count has an index that matches its WHERE. On a busy table PostgreSQL has not yet
# analysed, the planner took "blocked_at IS NOT NULL" (or "resend_count > 0") to match nearly
# every row and read the whole table instead of the partial index of the few that do: 60 ms
# per count at 60,000 events, on each poll. With sequential scans priced out it takes the
# index; JIT goes too, as the price put the tiny tables' scans over its threshold (90 ms of
# compiling for a one-row table).
_INDEXES_ONLY = ("enable_seqscan = off", "jit = off")


def _one(rows: Rows, sql: str) -> int:
    return int(rows(sql)[0][0] or 0)


def counts(rows: Rows, dialect: str, journal_file: Path | None = None) -> dict[str, Any]:
    """Every count, ``rows`` running one SQL statement and returning its rows. ``journal_file``:
    the MLLP intake journal, when it is on this machine (its messages are counted under
    inbox.journal; elsewhere that key is 0)."""
    by_status = {str(s): int(n) for s, n in rows("SELECT status, count(*) FROM inbox GROUP BY status")}
    repaired = "repaired = 1" if dialect == "sqlite" else "repaired"
    blocked = _one(rows, "SELECT count(*) FROM outbox WHERE blocked_at IS NOT NULL")
    jobs = {str(s): int(n) for s, n in rows("SELECT status, count(*) FROM jobs GROUP BY status")}
    app_acks = {str(s): int(n) for s, n in rows("SELECT status, count(*) FROM app_acks GROUP BY status")}
    stages = rows("SELECT stage, sum(cpu_s), sum(entries) FROM pipeline_stats GROUP BY stage")
    return {
        "inbox": {
            "received": sum(by_status.values()),
            "processed": by_status.get(InboxStatus.PROCESSED, 0),
            "failed": by_status.get(InboxStatus.FAILED, 0),
            "pending": by_status.get(InboxStatus.RECEIVED, 0),
            "duplicates": _one(
                rows, "SELECT coalesce(sum(resend_count), 0) FROM inbox WHERE resend_count > 0"
            ),
            "repaired": _one(rows, f"SELECT count(*) FROM inbox WHERE {repaired}"),
            "journal": _journaled(rows, journal_file),
        },
        # Patients scoped to one message (no identifier, or no PID: issue 19), as stored.
        "unlinked": _one(rows, f"SELECT count(*) FROM reid_map WHERE {UNLINKED_WHERE}"),
        "quarantined": _one(rows, "SELECT count(*) FROM quarantine"),
        "dead_letters": _one(rows, "SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL"),
        "resources": {str(t): int(n) for t, n in rows(RESOURCES_BY_TYPE)},
        "events": {
            # Tallied by the relays as they mark events sent (migration 0021): counting the
            # sent rows read the whole outbox, which keeps every event ever written.
            "published": _one(rows, "SELECT coalesce(sum(published), 0) FROM event_tallies"),
            "pending": _pending_events(rows, dialect, blocked),
            "blocked": blocked,
        },
        "jobs": {status.value: jobs.get(status, 0) for status in JobStatus},
        "app_acks": {status.value: app_acks.get(status, 0) for status in AppAckStatus},
        "audit_entries": _one(rows, "SELECT count(*) FROM audit_log"),
        "audit_pending": _one(rows, "SELECT count(*) FROM audit_pending"),
        "pipeline": {
            # Every stage counts each entry of a batch once; "load" sees them all.
            "entries": int(max((n or 0 for _, _, n in stages), default=0)),
            "cpu_ms": {str(stage): round(float(cpu) * 1000, 1) for stage, cpu, _ in _by_first(stages)},
        },
    }


def _pending_events(rows: Rows, dialect: str, blocked: int) -> int:
    if dialect == "postgresql":
        # The partial index of the waiting events (migration 0021): the index on (sent_at, id)
        # also holds every event sent since the last vacuum there.
        return _one(rows, f"SELECT count(*) FROM outbox WHERE {PENDING_EVENTS_WHERE}")
    # A blocked event is never sent: the rest of the unsent ones are pending (both counts come
    # from indexes; asking SQLite for "unsent and not blocked" read every unsent row).
    return _one(rows, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") - blocked


def _by_first(found: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    return sorted(found, key=lambda row: str(row[0]))


def _journaled(rows: Rows, journal_file: Path | None) -> int:
    journal_id = journal_id_of(journal_file) if journal_file is not None else None
    if journal_file is None or journal_id is None or not _JOURNAL_ID.match(journal_id):
        return 0
    moved = rows(f"SELECT moved_seq FROM intake_journals WHERE journal_id = '{journal_id}'")
    return pending_in_journal(journal_file, int(moved[0][0]) if moved else 0)


def collect(db: Database, journal_file: Path | None = None) -> dict[str, Any]:
    """The counts over the sidecar's own engine, every one read now (one read transaction;
    on SQLite a plain BEGIN, beside the writers instead of queuing for their lock)."""
    return StatusCounts(db, journal_file, max_age_s=0.0)()


class StatusCounts:
    """``collect`` for a server asked often (``GET /status``): the resources by type, which
    read the whole key index of the resources (~20 ms per 100,000 on SQLite, and a monitor
    polls), are reused for up to ``max_age_s``; every other count is read each time."""

    def __init__(self, db: Database, journal_file: Path | None = None, *, max_age_s: float = 5.0) -> None:
        self._db, self._journal_file, self._max_age_s = db, journal_file, max_age_s
        self._by_type: Sequence[Sequence[Any]] = ()
        self._read_at = -math.inf

    def __call__(self) -> dict[str, Any]:
        from core.db import READ_ONLY  # here: `sidecar stats` reads this module without the ORM

        def rows(sql: str) -> Sequence[Sequence[Any]]:
            if sql != RESOURCES_BY_TYPE:
                return connection.exec_driver_sql(sql).all()
            if time.monotonic() - self._read_at >= self._max_age_s:
                self._by_type = connection.exec_driver_sql(sql).all()
                self._read_at = time.monotonic()
            return self._by_type

        dialect = self._db.engine.dialect.name
        with self._db.engine.execution_options(**{READ_ONLY: True}).connect() as connection:
            if dialect == "postgresql":
                for setting in _INDEXES_ONLY:
                    connection.exec_driver_sql(f"SET LOCAL {setting}")
            return counts(rows, dialect, self._journal_file)


def collect_from_url(url: str, journal_file: Path | None) -> dict[str, Any] | None:
    """The counts over a bare DB-API connection to ``url`` (SQLite file or PostgreSQL), read
    only; None when the schema is not the code's (migrate first, then ``collect``)."""
    if url.startswith("sqlite:///"):
        import sqlite3

        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return None
        # Read-write mode, only SELECTs: a read-only connection cannot open a WAL database
        # whose shared-memory file no one has created yet.
        with closing(sqlite3.connect(path, timeout=30)) as sqlite:
            return _if_current(lambda sql: sqlite.execute(sql).fetchall(), "sqlite", journal_file)
    if url.startswith(("postgresql+psycopg://", "postgresql://")):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as pg:
            for setting in _INDEXES_ONLY:
                pg.execute(f"SET {setting}")  # this connection's, closed after
            return _if_current(lambda sql: pg.execute(sql).fetchall(), "postgresql", journal_file)
    return None


def _if_current(rows: Rows, dialect: str, journal_file: Path | None) -> dict[str, Any] | None:
    try:
        version = rows(VERSION_QUERY)
    except Exception:  # no such table (never migrated), in sqlite3's or psycopg's error class
        return None
    if not is_head(r[0] for r in version):
        return None
    return counts(rows, dialect, journal_file)
