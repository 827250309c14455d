"""The database-backed MessageSink: the inbox in core's tables.

``commit_many`` stores a whole batch in one transaction (one fsync) and returns only
after it committed; the listener ACKs after that, never before. A resend of the same
(sender, control id) increments ``resend_count`` on the stored row and is reported as a
duplicate: it is acknowledged again and never processed twice.

This is the intake's hot path: per batch, the rows and one audit entry listing the inbox
ids it covers, written by the database's own writer (``connectors.inbox_sqlite``,
``connectors.inbox_postgres``; what they share: ``connectors.inbox_rows``) on a held DB-API
connection rather than through SQLAlchemy, whose per-statement machinery cost more CPU than
the statements themselves (docs/intake.md, "How the inbox writes").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import select

import audit
from connectors.base import InboundMessage, MessageSink, Rejected, StoredReceipt
from connectors.inbox_postgres import PostgresWriter
from connectors.inbox_rows import COLUMNS, Batch, JournalMark, identity, row_values
from connectors.inbox_sqlite import SqliteWriter
from core.db import Database
from core.tables import InboxEntry, IntakeJournalPosition, QuarantineEntry

__all__ = ["DatabaseInbox", "JournalMark"]

log = logging.getLogger("sidecar.connectors.inbox")

_INBOX = InboxEntry.__table__


class _Writer(Protocol):
    def commit(self, batch: Batch) -> list[StoredReceipt]: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class DatabaseInbox(MessageSink):
    """The inbox as a MessageSink: deduplicates a batch, converts it to rows as the ORM would
    write them, and hands it to its database's writer (``connectors.inbox_sqlite``,
    ``connectors.inbox_postgres``) under one lock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        dialect = db.engine.dialect
        # The dialect's own converters, so rows look exactly as if the ORM wrote them
        # (SQLite stores datetimes as text in SQLAlchemy's format, booleans as 0/1).
        processors = [_INBOX.c[name].type.bind_processor(dialect) for name in COLUMNS]
        self._processors: list[Callable[[Any], Any]] = [p or identity for p in processors]
        # One writer with its held connection(s): group commit calls commit_many from a
        # single thread; the lock covers any other caller.
        self._writer: _Writer = SqliteWriter(db) if dialect.name == "sqlite" else PostgresWriter(db)
        self._lock = threading.Lock()

    def commit(self, message: InboundMessage) -> StoredReceipt:
        return self.commit_many([message])[0]

    def commit_many(
        self, messages: Sequence[InboundMessage], *, journal: JournalMark | None = None
    ) -> list[StoredReceipt]:
        if not messages:
            return []
        # One row per (sender, control id): PostgreSQL refuses to touch a row twice in one
        # statement, and a resend inside the same batch is a duplicate all the same.
        first: dict[tuple[str, str], int] = {}
        extra: dict[tuple[str, str], int] = {}
        for index, m in enumerate(messages):
            key = (m.header.sender, m.header.control_id)
            if key in first:
                extra[key] = extra.get(key, 0) + 1
            else:
                first[key] = index
        rows = [
            [proc(value) for proc, value in zip(self._processors, row_values(messages[i]), strict=True)]
            for i in first.values()
        ]
        with self._lock:
            try:
                return self._writer.commit(Batch(messages, extra, rows, journal))
            except BaseException:
                # Whatever broke (a constraint, a dropped server, a full disk), the
                # connections are not reused: the next batch starts on fresh ones.
                self._writer.release()
                raise

    def close(self) -> None:
        with self._lock:
            self._writer.close()

    def journal_position(self, journal_id: str) -> int:
        """The last record of that journal the inbox stored (0: none yet)."""
        with self._db.sessions() as session:
            seq = session.execute(
                select(IntakeJournalPosition.moved_seq).where(IntakeJournalPosition.journal_id == journal_id)
            ).scalar_one_or_none()
        return int(seq or 0)

    def quarantine(self, item: Rejected, *, journal: JournalMark | None = None) -> int:
        with self._db.transaction() as session:
            row = QuarantineEntry(
                source=item.source,
                peer=item.peer,
                received_at=item.received_at,
                code=item.code,
                reason=item.reason,
                raw=item.raw,
            )
            session.add(row)
            session.flush()
            audit.append(
                session,
                actor=f"connector:{item.source}",
                action="message.quarantined",
                entity=f"quarantine/{row.id}",
                outcome=audit.Outcome.FAILURE,
                detail={"peer": item.peer, "code": item.code, "bytes": len(item.raw)},
                now=item.received_at,
            )
            if journal is not None:
                # Only the mover of that journal writes its row: a read-then-write merge is safe.
                session.merge(IntakeJournalPosition(journal_id=journal.journal_id, moved_seq=journal.seq))
            log.warning("quarantined", extra={"quarantine_id": row.id, "code": item.code, "peer": item.peer})
            return row.id
