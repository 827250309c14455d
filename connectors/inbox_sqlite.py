"""The inbox's writer on SQLite: a batch in one BEGIN IMMEDIATE transaction on one held
connection, the WAL checkpointed off the intake's path by a thread of its own."""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from typing import Any

from sqlalchemy.pool import PoolProxiedConnection

from connectors.base import StoredReceipt
from connectors.inbox_rows import (
    COLUMNS,
    CONTROL_ID,
    LOOKUP_KEYS,
    RECEIVED_AT,
    ROWS_PER_STATEMENT,
    SENDER,
    Batch,
    discard,
    finish_batch,
)
from core.db import Database

__all__ = ["SqliteWriter"]

log = logging.getLogger("sidecar.connectors.inbox")


class SqliteWriter:
    """``write`` stores deduplicated rows in one transaction; called under the inbox's lock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._held: PoolProxiedConnection | None = None
        self._insert_by_size: dict[int, str] = {}
        self._checkpointer = _Checkpointer(db)

    def commit(self, batch: Batch) -> list[StoredReceipt]:
        if self._held is None:
            self._held = self._db.engine.raw_connection()
            # The commit that crosses SQLite's WAL threshold runs the checkpoint itself
            # (copying ~4 MB and two more fsyncs): tens of ms on an ACK's path. The writer
            # leaves that to the checkpointer thread.
            self._held.cursor().execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer.start()
        return self.write(self._held, batch)

    def release(self) -> None:
        """After a failure: the connection is not reused."""
        held, self._held = self._held, None
        discard(held)

    def close(self) -> None:
        self._checkpointer.stop()
        if self._held is not None:
            with suppress(Exception):  # back to the pool as it came
                self._held.cursor().execute("PRAGMA wal_autocheckpoint=1000")
            self._held.close()
            self._held = None

    def write(
        self,
        connection: PoolProxiedConnection,
        batch: Batch,
    ) -> list[StoredReceipt]:
        messages, extra, rows, journal = batch.messages, batch.extra, batch.rows, batch.journal
        cursor = connection.cursor()
        try:
            # The driver runs in autocommit (see core.db); IMMEDIATE takes the write lock
            # up front, as every other transaction here does.
            cursor.execute("BEGIN IMMEDIATE")
            by_key = self._write_sqlite(cursor, rows)
            receipts = finish_batch(cursor, "?", messages, extra, by_key, journal)
            cursor.execute("COMMIT")
        except BaseException:
            with suppress(Exception):
                cursor.execute("ROLLBACK")
            raise
        finally:
            with suppress(Exception):
                cursor.close()
        return receipts

    def _write_sqlite(self, cursor: Any, rows: list[list[Any]]) -> dict[tuple[str, str], tuple[int, int]]:
        """SQLite: look up the (few) resends, number the new rows under the write lock,
        insert them without RETURNING.

        RETURNING hands rows back one sqlite3_step at a time, and the driver gives up and
        retakes the GIL around every step; with the event loop busy framing, each retake
        waited out the switch interval (docs/intake.md). This way a batch costs a fixed handful
        of steps whatever its size. The numbering is
        safe: BEGIN IMMEDIATE holds the database's only write lock until COMMIT.
        """
        by_key: dict[tuple[str, str], tuple[int, int]] = {}
        keys = [(row[SENDER], row[CONTROL_ID]) for row in rows]
        for start in range(0, len(keys), LOOKUP_KEYS):
            lookup = keys[start : start + LOOKUP_KEYS]
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
        received = {(row[SENDER], row[CONTROL_ID]): row[RECEIVED_AT] for row in rows}
        for key, (inbox_id, _) in by_key.items():
            cursor.execute(
                "UPDATE inbox SET resend_count = resend_count + 1, last_resend_at = ? WHERE id = ?",
                (received[key], inbox_id),
            )
        new = [row for row in rows if (row[SENDER], row[CONTROL_ID]) not in by_key]
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM inbox")
        next_id = int(cursor.fetchone()[0]) + 1
        for start in range(0, len(new), ROWS_PER_STATEMENT):
            chunk = new[start : start + ROWS_PER_STATEMENT]
            params: list[Any] = []
            for row in chunk:
                by_key[(row[SENDER], row[CONTROL_ID])] = (next_id, 0)
                params.append(next_id)
                params.extend(row)
                next_id += 1
            cursor.execute(self._insert_sql(len(chunk)), tuple(params))
        return by_key

    def _insert_sql(self, rows: int) -> str:
        sql = self._insert_by_size.get(rows)
        if sql is None:
            one = "(" + ", ".join(["?"] * (len(COLUMNS) + 1)) + ")"
            sql = f"INSERT INTO inbox (id, {', '.join(COLUMNS)}) VALUES {', '.join([one] * rows)}"
            self._insert_by_size[rows] = sql
        return sql


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
