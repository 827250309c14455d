"""The inbox's writer on PostgreSQL: a lone message (one sender waiting for each ACK) in one
autocommit statement with its pending audit entry, linked into the chain by a thread of its
own; a batch pipelined in one transaction, or copied through a temporary table when large."""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from datetime import datetime
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

import audit
from connectors.base import InboundMessage, StoredReceipt
from connectors.inbox_rows import COLUMNS, Batch, discard, finish_batch, received_entry
from core.db import Database

__all__ = ["COPY_MIN_ROWS", "PostgresWriter"]

log = logging.getLogger("sidecar.connectors.inbox")

# PostgreSQL. One row per execution, the batch sent with executemany in pipeline mode: one
# statement text whatever the batch size, so the driver prepares it once and the server
# never plans it again (the alternatives measured: docs/intake.md, "How the inbox writes").
_UPSERT_PG = (
    f"INSERT INTO inbox ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
    "ON CONFLICT (sender, control_id) DO UPDATE SET "
    "resend_count = inbox.resend_count + 1, last_resend_at = excluded.received_at "
    "RETURNING id, sender, control_id, resend_count"
)
# PostgreSQL, batches of at least COPY_MIN_ROWS (the intake journal's mover, many senders at
# once): the rows are copied in binary into a temporary table and upserted from it by one
# statement, which spends less of the GIL the event loop needs; smaller batches keep the
# pipelined upserts, fewer round trips for a lone sender (docs/intake.md).
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
_COPY_STAGE_PG = f"COPY inbox_stage (ord, {', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# ORDER BY ord: ids are drawn in arrival order, as the row-by-row upserts draw them.
_UPSERT_STAGED_PG = (
    f"INSERT INTO inbox ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM inbox_stage ORDER BY ord "
    "ON CONFLICT (sender, control_id) DO UPDATE SET "
    "resend_count = inbox.resend_count + 1, last_resend_at = excluded.received_at "
    "RETURNING id, sender, control_id, resend_count"
)


# PostgreSQL, a lone message (one sender waiting for each ACK, no journal): the row and its
# audit entry in ONE autocommit statement, one round trip that commits. The entry cannot
# join the hash chain here (that needs the head read and locked first, a second round
# trip), so it is written to audit_pending, with the same fields _audit_batch would
# give it, and linked into the chain moments later by the inbox's chainer thread
# (audit.chain_pending). One round trip instead of two (docs/intake.md).
_UPSERT_LONE_PG = (
    "WITH up AS (" + _UPSERT_PG + "), entry AS ("
    "INSERT INTO audit_pending (at, actor, action, outcome, entity, detail) "
    "SELECT %s, %s, 'messages.received', 'success', 'inbox/' || id || '-' || id, json_build_object("
    "'new', CASE WHEN resend_count = 0 THEN json_build_array(id) ELSE json_build_array() END, "
    "'resent', CASE WHEN resend_count > 0 THEN json_build_array(id) ELSE json_build_array() END, "
    "'peers', json_build_array(%s::text), 'repaired', %s::int, 'bytes', %s::int)::text FROM up"
    ") SELECT id, sender, control_id, resend_count FROM up"
)


class PostgresWriter:
    """``commit`` stores deduplicated rows; called under the inbox's lock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._held: PoolProxiedConnection | None = None
        self._staged = False  # the held connection has its temporary table
        self._autocommit: PoolProxiedConnection | None = None  # lone messages
        self._chainer = _Chainer(db)

    def commit(self, batch: Batch) -> list[StoredReceipt]:
        if len(batch.rows) == 1 and not batch.extra and batch.journal is None:
            receipt = self._commit_lone_pg(self._autocommit_connection(), batch.messages[0], batch.rows[0])
            self._chainer.wake()
            return [receipt]
        return self._commit_rows_pg(self._connection(), batch)

    def _connection(self) -> PoolProxiedConnection:
        if self._held is None:
            self._held = self._db.engine.raw_connection()
            self._chainer.start()  # entries a crash left pending are linked without waiting
        return self._held

    def _autocommit_connection(self) -> PoolProxiedConnection:
        """A second held connection, in autocommit, for lone messages."""
        if self._autocommit is None:
            connection = self._db.engine.raw_connection()
            pg: Any = connection.driver_connection
            pg.rollback()  # whatever the pool's checkout left open
            pg.autocommit = True
            self._autocommit = connection
            self._chainer.start()
        return self._autocommit

    def release(self) -> None:
        """After a failure: neither connection is reused."""
        held, self._held = self._held, None
        lone, self._autocommit = self._autocommit, None
        self._staged = False
        discard(held, lone)

    def close(self) -> None:
        self._chainer.stop()
        if self._autocommit is not None:
            with suppress(Exception):  # back to the pool as it came
                self._autocommit.driver_connection.autocommit = False  # type: ignore[union-attr]
            self._autocommit.close()
            self._autocommit = None
        if self._held is not None:
            self._held.close()
            self._held = None
            self._staged = False

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

    def _commit_rows_pg(
        self,
        connection: PoolProxiedConnection,
        batch: Batch,
    ) -> list[StoredReceipt]:
        """PostgreSQL in pipeline mode: the audit head lock and the upserts go out together
        in one round trip, the resend counts, audit entry and COMMIT in a last one; one
        statement at a time took six round trips (each a wait on the server and a GIL
        hand-over). Batches of COPY_MIN_ROWS or more go through a temporary table instead."""
        messages, extra, rows, journal = batch.messages, batch.extra, batch.rows, batch.journal
        pg: Any = connection.driver_connection
        if pg is None:
            raise RuntimeError("inbox connection is closed")
        if len(rows) >= COPY_MIN_ROWS:
            return self._commit_rows_pg_copied(pg, batch)
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
                receipts = finish_batch(pg.cursor(), "%s", messages, extra, by_key, journal, head=head)
                pg.commit()
        except BaseException:
            with suppress(Exception):
                pg.rollback()
            raise
        return receipts

    def _commit_rows_pg_copied(
        self,
        pg: Any,
        batch: Batch,
    ) -> list[StoredReceipt]:
        """PostgreSQL, a large batch: the audit head lock first (the order every appender
        takes), the rows copied into the temporary table, one upsert from it, then the
        resend counts, audit entry and COMMIT as on the pipelined path."""
        messages, extra, rows, journal = batch.messages, batch.extra, batch.rows, batch.journal
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
            receipts = finish_batch(cursor, "%s", messages, extra, by_key, journal, head=head)
            pg.commit()
            self._staged = True
        except BaseException:
            with suppress(Exception):
                pg.rollback()
            raise
        return receipts


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
            entity, detail = received_entry(
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
