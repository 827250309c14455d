"""The database-backed MessageSink: the inbox in core's tables.

``commit_many`` stores a whole batch in one transaction (one fsync) and returns only
after it committed; the listener ACKs after that, never before. A resend of the same
(sender, control id) increments ``resend_count`` on the stored row and is reported as a
duplicate: it is acknowledged again and never processed twice.

This is the intake's hot path: per batch, the rows (PostgreSQL: one prepared ``INSERT … ON
CONFLICT DO UPDATE … RETURNING`` per row, pipelined, see ``_UPSERT_PG``; SQLite: see
``_write_sqlite``) and one audit entry listing the inbox ids it covers, all on a held
DB-API connection: SQLAlchemy's
per-statement machinery (events, result proxies, transaction objects) cost more CPU than
the statements themselves (profiled ~0.45 ms of a ~0.6 ms one-message commit).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.pool import PoolProxiedConnection

import audit
from connectors.base import InboundMessage, MessageSink, Rejected, StoredReceipt
from core.db import Database
from core.tables import InboxEntry, InboxStatus, IntakeJournalPosition, QuarantineEntry

log = logging.getLogger("sidecar.connectors.inbox")

_INBOX = InboxEntry.__table__
ROWS_PER_STATEMENT = 1000  # x 13 columns: well under SQLite's parameter limit


_COLUMNS = (
    "source", "peer", "sender", "control_id", "message_type", "received_at",
    "raw", "charset", "repaired", "status", "resend_count", "attempts",
)  # fmt: skip
_SENDER, _CONTROL_ID, _RECEIVED_AT = (_COLUMNS.index(c) for c in ("sender", "control_id", "received_at"))
_LOOKUP_KEYS = 1000  # x 2 parameters per resend lookup
# PostgreSQL. One row per execution, the batch sent with executemany in pipeline mode: one
# statement text whatever the batch size, so the driver prepares it once and the server
# never plans it again. Upserting 50 rows (measured, no commit): multi-row VALUES (a new
# statement per batch size, parsed and planned every time) 1.5-1.9 ms, unnest() over one
# array per column ~1.6 ms, this 1.1-1.2 ms.
_UPSERT_PG = (
    f"INSERT INTO inbox ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
    "ON CONFLICT (sender, control_id) DO UPDATE SET "
    "resend_count = inbox.resend_count + 1, last_resend_at = excluded.received_at "
    "RETURNING id, sender, control_id, resend_count"
)
# PostgreSQL, batches of at least COPY_MIN_ROWS (the intake journal's mover, many senders at
# once): the rows are copied in binary into a temporary table and upserted from it by one
# statement. Per row, for 500-row batches: 22 µs wall and 4 µs of Python against 65 and 31
# µs for the pipelined upserts (50-row batches: 47/11 against 75/37) — Python time matters
# as much as wall time here, since it holds the GIL the event loop needs. Smaller batches
# keep the pipelined upserts: fewer round trips for a lone sender's commit. (The bound also
# keeps each executemany short: a 128-row one stalled now and then for ~200 ms in the
# driver, two of its 0.1 s wait intervals; never with 32 rows or fewer.)
COPY_MIN_ROWS = 32
_STAGE_PG = (
    "CREATE TEMP TABLE IF NOT EXISTS inbox_stage (ord int, source text, peer text, sender text, "
    "control_id text, message_type text, received_at timestamptz, raw bytea, charset text, "
    "repaired bool, status text, resend_count int, attempts int) ON COMMIT DELETE ROWS"
)
_STAGE_TYPES = (
    "int4", "text", "text", "text", "text", "text", "timestamptz",
    "bytea", "text", "bool", "text", "int4", "int4",
)  # fmt: skip
_COPY_STAGE_PG = f"COPY inbox_stage (ord, {', '.join(_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# ORDER BY ord: ids are drawn in arrival order, as the row-by-row upserts draw them.
_UPSERT_STAGED_PG = (
    f"INSERT INTO inbox ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM inbox_stage ORDER BY ord "
    "ON CONFLICT (sender, control_id) DO UPDATE SET "
    "resend_count = inbox.resend_count + 1, last_resend_at = excluded.received_at "
    "RETURNING id, sender, control_id, resend_count"
)


# PostgreSQL, a lone message (one sender waiting for each ACK, no journal): the row and its
# audit entry in ONE autocommit statement, one round trip that commits. The entry cannot
# join the hash chain here (that needs the head read and locked first, a second round
# trip), so it is written to audit_pending, with the same fields _audit_batch would
# give it, and linked into the chain moments later by the inbox's chainer thread
# (audit.chain_pending). Measured without the socket: ~0.34 ms against ~0.57 ms for the
# pipelined transaction with the head lock (0.27 ms for a bare autocommit INSERT).
_UPSERT_LONE_PG = (
    "WITH up AS (" + _UPSERT_PG + "), entry AS ("
    "INSERT INTO audit_pending (at, actor, action, outcome, entity, detail) "
    "SELECT %s, %s, 'messages.received', 'success', 'inbox/' || id || '-' || id, json_build_object("
    "'new', CASE WHEN resend_count = 0 THEN json_build_array(id) ELSE json_build_array() END, "
    "'resent', CASE WHEN resend_count > 0 THEN json_build_array(id) ELSE json_build_array() END, "
    "'peers', json_build_array(%s::text), 'repaired', %s::int, 'bytes', %s::int)::text FROM up"
    ") SELECT id, sender, control_id, resend_count FROM up"
)


@dataclass(frozen=True)
class JournalMark:
    """How far an intake journal's records are stored (connectors.journal): recorded in the
    transaction that stores them, so a record reaches the inbox exactly once."""

    journal_id: str
    seq: int


class DatabaseInbox(MessageSink):
    def __init__(self, db: Database) -> None:
        self._db = db
        dialect = db.engine.dialect
        # The dialect's own converters, so rows look exactly as if the ORM wrote them
        # (SQLite stores datetimes as text in SQLAlchemy's format, booleans as 0/1).
        processors = [_INBOX.c[name].type.bind_processor(dialect) for name in _COLUMNS]
        self._processors: list[Callable[[Any], Any]] = [p or _identity for p in processors]
        self._insert_by_size: dict[int, str] = {}
        self._is_sqlite = dialect.name == "sqlite"
        # One connection held for the writer (group commit calls commit_many from a single
        # thread; the lock covers any other caller): a pool checkout, its reset-on-return
        # rollback and PostgreSQL's pre-ping cost ~0.4 ms per batch, a third of a
        # one-message commit (measured).
        self._held: PoolProxiedConnection | None = None
        self._staged = False  # PostgreSQL: the held connection has its temporary table
        self._lock = threading.Lock()
        self._checkpointer = _Checkpointer(db)
        self._autocommit: PoolProxiedConnection | None = None  # PostgreSQL, lone messages
        self._chainer = _Chainer(db)

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
            [proc(value) for proc, value in zip(self._processors, _values(messages[i]), strict=True)]
            for i in first.values()
        ]
        lone = not self._is_sqlite and len(rows) == 1 and not extra and journal is None
        with self._lock:
            try:
                if lone:
                    receipts = [self._commit_lone_pg(self._autocommit_connection(), messages[0], rows[0])]
                else:
                    receipts = self._commit_rows(self._connection(), messages, extra, rows, journal)
            except BaseException:
                # Whatever broke (a constraint, a dropped server, a full disk), the
                # connections are not reused: the next batch starts on fresh ones.
                self._release()
                raise
        if lone:
            self._chainer.wake()
        return receipts

    def _connection(self) -> PoolProxiedConnection:
        if self._held is None:
            self._held = self._db.engine.raw_connection()
            if self._is_sqlite:
                # The commit that crosses SQLite's WAL threshold runs the checkpoint itself
                # (copying ~4 MB and two more fsyncs): tens of ms on an ACK's path. The
                # writer leaves that to the checkpointer thread.
                self._held.cursor().execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer.start()
            else:  # entries a crash left pending are linked without waiting for a lone message
                self._chainer.start()
        return self._held

    def _autocommit_connection(self) -> PoolProxiedConnection:
        """PostgreSQL: a second held connection, in autocommit, for lone messages."""
        if self._autocommit is None:
            connection = self._db.engine.raw_connection()
            pg: Any = connection.driver_connection
            pg.rollback()  # whatever the pool's checkout left open
            pg.autocommit = True
            self._autocommit = connection
            self._chainer.start()
        return self._autocommit

    def _commit_lone_pg(
        self, connection: PoolProxiedConnection, message: InboundMessage, row: list[Any]
    ) -> StoredReceipt:
        pg: Any = connection.driver_connection
        if pg is None:
            raise RuntimeError("inbox connection is closed")
        cursor = pg.cursor()
        cursor.execute(
            _UPSERT_LONE_PG,
            (
                *row,
                message.received_at.isoformat(timespec="microseconds"),
                "connector:" + message.source,
                message.peer,
                int(message.repaired),
                len(message.raw),
            ),
            prepare=True,
        )
        inbox_id, _, _, resends = cursor.fetchone()
        return StoredReceipt(inbox_id=int(inbox_id), duplicate=int(resends) > 0)

    def _release(self) -> None:
        held, self._held = self._held, None
        lone, self._autocommit = self._autocommit, None
        self._staged = False
        for connection in (held, lone):
            if connection is not None:
                with suppress(Exception):
                    connection.invalidate()
                with suppress(Exception):
                    connection.close()

    def close(self) -> None:
        self._checkpointer.stop()
        self._chainer.stop()
        with self._lock:
            if self._autocommit is not None:
                with suppress(Exception):  # back to the pool as it came
                    self._autocommit.driver_connection.autocommit = False  # type: ignore[union-attr]
                self._autocommit.close()
                self._autocommit = None
            if self._held is not None:
                if self._is_sqlite:  # back to the pool as it came
                    with suppress(Exception):
                        self._held.cursor().execute("PRAGMA wal_autocheckpoint=1000")
                self._held.close()
                self._held = None
                self._staged = False

    def _commit_rows(
        self,
        connection: PoolProxiedConnection,
        messages: Sequence[InboundMessage],
        extra: dict[tuple[str, str], int],
        rows: list[list[Any]],
        journal: JournalMark | None,
    ) -> list[StoredReceipt]:
        if not self._is_sqlite:
            return self._commit_rows_pg(connection, messages, extra, rows, journal)
        cursor = connection.cursor()
        try:
            # The driver runs in autocommit (see core.db); IMMEDIATE takes the write lock
            # up front, as every other transaction here does.
            cursor.execute("BEGIN IMMEDIATE")
            by_key = self._write_sqlite(cursor, rows)
            receipts = _finish_batch(cursor, "?", messages, extra, by_key, journal)
            cursor.execute("COMMIT")
        except BaseException:
            with suppress(Exception):
                cursor.execute("ROLLBACK")
            raise
        finally:
            with suppress(Exception):
                cursor.close()
        return receipts

    def _commit_rows_pg(
        self,
        connection: PoolProxiedConnection,
        messages: Sequence[InboundMessage],
        extra: dict[tuple[str, str], int],
        rows: list[list[Any]],
        journal: JournalMark | None,
    ) -> list[StoredReceipt]:
        """PostgreSQL in pipeline mode: the audit head lock and the upserts go out together
        in one round trip, the resend counts, audit entry and COMMIT in a last one; one
        statement at a time took six round trips (each a wait on the server and a GIL
        hand-over). Batches of COPY_MIN_ROWS or more go through a temporary table instead."""
        pg: Any = connection.driver_connection
        if pg is None:
            raise RuntimeError("inbox connection is closed")
        if len(rows) >= COPY_MIN_ROWS:
            return self._commit_rows_pg_copied(pg, messages, extra, rows, journal)
        try:
            with pg.pipeline() as pipeline:
                by_key: dict[tuple[str, str], tuple[int, int]] = {}
                head_cursor = pg.cursor()
                head_cursor.execute(audit.log.HEAD_FOR_UPDATE)
                cursor = pg.cursor()
                cursor.executemany(_UPSERT_PG, rows, returning=True)
                pipeline.sync()
                while True:  # one result per row
                    for r in cursor.fetchall():
                        by_key[(r[1], r[2])] = (int(r[0]), int(r[3]))
                    if not cursor.nextset():
                        break
                head = head_cursor.fetchone()
                receipts = _finish_batch(pg.cursor(), "%s", messages, extra, by_key, journal, head=head)
                pg.commit()
        except BaseException:
            with suppress(Exception):
                pg.rollback()
            raise
        return receipts

    def _commit_rows_pg_copied(
        self,
        pg: Any,
        messages: Sequence[InboundMessage],
        extra: dict[tuple[str, str], int],
        rows: list[list[Any]],
        journal: JournalMark | None,
    ) -> list[StoredReceipt]:
        """PostgreSQL, a large batch: the audit head lock first (the order every appender
        takes), the rows copied into the temporary table, one upsert from it, then the
        resend counts, audit entry and COMMIT as on the pipelined path."""
        try:
            cursor = pg.cursor()
            cursor.execute(audit.log.HEAD_FOR_UPDATE)
            head = cursor.fetchone()
            if not self._staged:
                cursor.execute(_STAGE_PG)  # rolled back with the batch if the batch fails
            with cursor.copy(_COPY_STAGE_PG) as copy:
                copy.set_types(_STAGE_TYPES)
                for ordinal, row in enumerate(rows):
                    copy.write_row((ordinal, *row))
            cursor.execute(_UPSERT_STAGED_PG, prepare=True)
            by_key = {(r[1], r[2]): (int(r[0]), int(r[3])) for r in cursor.fetchall()}
            receipts = _finish_batch(cursor, "%s", messages, extra, by_key, journal, head=head)
            pg.commit()
            self._staged = True
        except BaseException:
            with suppress(Exception):
                pg.rollback()
            raise
        return receipts

    def _write_sqlite(self, cursor: Any, rows: list[list[Any]]) -> dict[tuple[str, str], tuple[int, int]]:
        """SQLite: look up the (few) resends, number the new rows under the write lock,
        insert them without RETURNING.

        RETURNING hands rows back one sqlite3_step at a time, and the driver gives up and
        retakes the GIL around every step; with the event loop busy framing, each retake
        waited out the switch interval, so a 70-row batch took ~10 ms instead of ~3. This
        way a batch costs a fixed handful of steps whatever its size. The numbering is
        safe: BEGIN IMMEDIATE holds the database's only write lock until COMMIT.
        """
        by_key: dict[tuple[str, str], tuple[int, int]] = {}
        keys = [(row[_SENDER], row[_CONTROL_ID]) for row in rows]
        for start in range(0, len(keys), _LOOKUP_KEYS):
            lookup = keys[start : start + _LOOKUP_KEYS]
            # CROSS JOIN keeps SQLite from scanning the inbox: it walks the VALUES and
            # searches the (sender, control_id) unique index for each.
            cursor.execute(
                "SELECT i.id, i.sender, i.control_id, i.resend_count FROM (VALUES "
                + ", ".join(["(?, ?)"] * len(lookup))
                + ") AS v CROSS JOIN inbox AS i ON i.sender = v.column1 AND i.control_id = v.column2",
                tuple(value for key in lookup for value in key),
            )
            for r in cursor.fetchall():
                by_key[(r[1], r[2])] = (int(r[0]), int(r[3]) + 1)
        received = {(row[_SENDER], row[_CONTROL_ID]): row[_RECEIVED_AT] for row in rows}
        for key, (inbox_id, _) in by_key.items():
            cursor.execute(
                "UPDATE inbox SET resend_count = resend_count + 1, last_resend_at = ? WHERE id = ?",
                (received[key], inbox_id),
            )
        new = [row for row in rows if (row[_SENDER], row[_CONTROL_ID]) not in by_key]
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM inbox")
        next_id = int(cursor.fetchone()[0]) + 1
        for start in range(0, len(new), ROWS_PER_STATEMENT):
            chunk = new[start : start + ROWS_PER_STATEMENT]
            params: list[Any] = []
            for row in chunk:
                by_key[(row[_SENDER], row[_CONTROL_ID])] = (next_id, 0)
                params.append(next_id)
                params.extend(row)
                next_id += 1
            cursor.execute(self._insert_sql(len(chunk)), tuple(params))
        return by_key

    def _insert_sql(self, rows: int) -> str:
        sql = self._insert_by_size.get(rows)
        if sql is None:
            one = "(" + ", ".join(["?"] * (len(_COLUMNS) + 1)) + ")"
            sql = f"INSERT INTO inbox (id, {', '.join(_COLUMNS)}) VALUES {', '.join([one] * rows)}"
            self._insert_by_size[rows] = sql
        return sql

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


class _Checkpointer:
    """Moves SQLite's WAL into the database file off the intake's path, on its own
    connection, every ``interval_s``. PASSIVE never waits for (nor blocks) writers; the
    pipeline's connections keep SQLite's automatic checkpoints as a backstop."""

    def __init__(self, db: Database, interval_s: float = 0.5) -> None:
        self._db = db
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        connection: PoolProxiedConnection | None = None
        while not self._stop.wait(self._interval_s):
            try:
                if connection is None:
                    connection = self._db.engine.raw_connection()
                connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:
                # A failed checkpoint loses nothing (the WAL keeps the data); try again.
                log.warning(
                    "wal checkpoint failed",
                    extra={"event": "inbox.checkpoint_failed", "error": type(exc).__name__},
                )
                if connection is not None:
                    with suppress(Exception):
                        connection.invalidate()
                connection = None
        if connection is not None:
            with suppress(Exception):
                connection.close()


class _Chainer:
    """Links the lone messages' pending audit entries into the chain (audit.chain_pending):
    woken by each such commit, it waits ``gather_s`` so one transaction links what a
    waiting sender sent meanwhile, and sweeps every ``sweep_s`` (and at start and stop)
    for entries a crash left behind. A failed pass loses nothing: the entries stay
    pending and the next pass takes them."""

    def __init__(self, db: Database, gather_s: float = 0.2, sweep_s: float = 5.0) -> None:
        self._db = db
        self._gather_s = gather_s
        self._sweep_s = sweep_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._wake.set()  # a first pass at once: what a crash left pending
            self._thread = threading.Thread(target=self._run, name="audit-chain", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._sweep_s)
            self._stop.wait(self._gather_s)  # at once when stopping
            self._wake.clear()
            self._link_all()
        self._link_all()  # what came in while the last pass ran

    def _link_all(self) -> None:
        try:
            # Another page only when this one was full: chasing a waiting sender's every
            # new message would make each pass a tiny one.
            while audit.chain_pending(self._db.engine, limit=_PAGE, combine=_one_entry_per_run) == _PAGE:
                pass
        except Exception as exc:
            log.warning(
                "linking pending audit entries failed",
                extra={"event": "audit.chain_pending_failed", "error": type(exc).__name__},
            )


_PAGE = 5000  # pending entries per linking transaction
_RUN_MAX = 500  # lone messages per linked entry: the size of the largest batch's entry


def _one_entry_per_run(pending: list[audit.PendingEntry]) -> list[audit.PendingEntry]:
    """Consecutive lone-message entries of one connector as one entry, the entry one batch
    of them would have had (_audit_batch): a chain entry per message cost the listener
    ~40% of one waiting sender's rate on two cores (hashing and inserting 2,000 entries a
    second beside it)."""
    out: list[audit.PendingEntry] = []
    run: list[audit.PendingEntry] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            entity, detail = _received(
                new={i for p in run for i in p.detail["new"]},
                resent={i for p in run for i in p.detail["resent"]},
                peers={peer for p in run for peer in p.detail["peers"]},
                repaired=sum(p.detail["repaired"] for p in run),
                size=sum(p.detail["bytes"] for p in run),
            )
            out.append(
                audit.PendingEntry(
                    at=max(run, key=lambda p: datetime.fromisoformat(p.at)).at,
                    actor=run[0].actor,
                    action=run[0].action,
                    outcome=run[0].outcome,
                    entity=entity,
                    detail=detail,
                )
            )
        run.clear()

    for p in pending:
        if p.action != "messages.received" or (run and (p.actor != run[0].actor or len(run) >= _RUN_MAX)):
            flush()
        if p.action == "messages.received":
            run.append(p)
        else:
            out.append(p)
    flush()
    return out


def _identity(value: Any) -> Any:
    return value


def _values(m: InboundMessage) -> tuple[Any, ...]:
    # Order of _COLUMNS.
    return (
        m.source,
        m.peer,
        m.header.sender,
        m.header.control_id,
        m.header.message_type[:32],
        m.received_at,
        m.raw,
        m.charset,
        m.repaired,
        str(InboxStatus.RECEIVED),
        0,
        0,
    )


def _finish_batch(
    cursor: Any,
    placeholder: str,
    messages: Sequence[InboundMessage],
    extra: dict[tuple[str, str], int],
    by_key: dict[tuple[str, str], tuple[int, int]],
    journal: JournalMark | None,
    *,
    head: tuple[Any, Any] | None = None,
) -> list[StoredReceipt]:
    """What every commit path writes once the rows are in, in the same transaction: the
    resends within the batch, the audit entry and the journal position. ``head``: the
    audit chain head PostgreSQL locked first (SQLite's BEGIN IMMEDIATE already holds it)."""
    _count_batch_resends(cursor, placeholder, extra, by_key)
    receipts = _receipts(messages, by_key)
    _audit_batch(cursor, placeholder, head is not None, messages, receipts, head=head)
    _record_journal(cursor, placeholder, journal)
    return receipts


def _record_journal(cursor: Any, placeholder: str, journal: JournalMark | None) -> None:
    if journal is None:
        return
    p = placeholder
    cursor.execute(
        f"INSERT INTO intake_journals (journal_id, moved_seq) VALUES ({p}, {p}) "
        "ON CONFLICT (journal_id) DO UPDATE SET moved_seq = excluded.moved_seq",
        (journal.journal_id, journal.seq),
    )


def _count_batch_resends(
    cursor: Any,
    placeholder: str,
    extra: dict[tuple[str, str], int],
    by_key: dict[tuple[str, str], tuple[int, int]],
) -> None:
    """Resends within one batch beyond the first occurrence (only the first became a row)."""
    p = placeholder
    for key, n in extra.items():
        cursor.execute(
            f"UPDATE inbox SET resend_count = resend_count + {p} WHERE id = {p}", (n, by_key[key][0])
        )


def _receipts(
    messages: Sequence[InboundMessage], by_key: dict[tuple[str, str], tuple[int, int]]
) -> list[StoredReceipt]:
    """One receipt per message, in order; a repeat within the batch is a duplicate too."""
    receipts: list[StoredReceipt] = []
    seen: set[tuple[str, str]] = set()
    for m in messages:
        key = (m.header.sender, m.header.control_id)
        inbox_id, resends = by_key[key]
        receipts.append(StoredReceipt(inbox_id=inbox_id, duplicate=resends > 0 or key in seen))
        seen.add(key)
    return receipts


def _audit_batch(
    cursor: Any,
    placeholder: str,
    lock_head: bool,
    messages: Sequence[InboundMessage],
    receipts: list[StoredReceipt],
    *,
    head: tuple[Any, Any] | None = None,
) -> None:
    """One entry for the whole batch: which inbox rows were written, from where."""
    sources = sorted({m.source for m in messages})
    entity, detail = _received(
        new={r.inbox_id for r in receipts if not r.duplicate},
        resent={r.inbox_id for r in receipts if r.duplicate},
        peers={m.peer for m in messages},
        repaired=sum(m.repaired for m in messages),
        size=sum(len(m.raw) for m in messages),
    )
    audit.append_dbapi(
        cursor,
        placeholder=placeholder,
        lock_head=lock_head,
        head=head,
        actor="connector:" + "+".join(sources),
        action="messages.received",
        entity=entity,
        detail=detail,
        now=max(m.received_at for m in messages),
    )


def _received(
    *, new: set[int], resent: set[int], peers: set[str], repaired: int, size: int
) -> tuple[str, dict[str, Any]]:
    """The entity and detail of a ``messages.received`` entry, for a batch and for a run of
    lone messages linked together (_one_entry_per_run); _UPSERT_LONE_PG writes one lone
    message's in SQL."""
    ids = new | resent
    return f"inbox/{min(ids)}-{max(ids)}", {
        "new": sorted(new),
        "resent": sorted(resent),
        "peers": sorted(peers),
        "repaired": repaired,
        "bytes": size,
    }
