"""The intake journal: where an MLLP message is made durable before its ACK, and the mover
that brings it into the inbox moments later.

Why a journal in front of the inbox: a sender that waits for each ACK (most interfaces)
pays one whole durable commit per message, with nothing to share it with. The inbox's
commit is heavy for that: the row and its two indexes, the resend lookup and the batch's
audit entry with its chain head; on SQLite under the one write lock the pipeline also
takes, on PostgreSQL several round trips to a server whose own bare commit already costs
most of a 0.5 ms budget. One append to a file of the listener's own costs a page and one
fsync. So the listener ACKs after that append (the raw bytes are fsync'd, as before; only
the place changed), and a mover thread takes journaled messages into the inbox in
batches: rows, resend check and audit entry in one transaction, as every other intake
writes them. Medplum's agent does the same (a local SQLite queue, ACK from there,
forwarded after).

Exactly once across crashes: the inbox transaction that stores a batch also records the
journal position it reached (table ``intake_journals``, keyed by this journal's id), and
the mover always starts from the position the inbox recorded. A crash after the inbox
commit and before anything here moves nothing twice; a crash before it moves the batch
again, whole. Records up to the position are forgotten lazily; the last one is kept so
that sequence numbers never repeat (SQLite would reuse the highest rowid of an empty table).

Hand-written on SQLite (a standard library module) rather than on a queue library: what is
needed is exactly one fsync'd transaction per append and a position that the inbox's own
transaction can record, which a broker client or an in-memory queue cannot give.

Bounded: when the inbox stops taking messages (database down, disk full) the journal
fills up to ``max_backlog`` messages, then ``commit_many`` refuses and the listener answers
AE/CE, so senders keep their messages until the inbox is back.
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from connectors.base import CommitListener, InboundMessage, Receipt, Rejected, notify_committed
from connectors.hl7.header import peek_header
from connectors.inbox import DatabaseInbox, JournalMark
from connectors.metrics import IntakeMetrics
from core.errors import ConfigError, IngestError

log = logging.getLogger("sidecar.connectors.journal")

FORMAT = "1"
# Between transactions the mover lets messages gather while they keep coming (checked
# every GATHER_STEP_S), for at most GATHER_MAX_S or until MOVE_BATCH are waiting: a steady
# sender's messages then reach the inbox hundreds per transaction instead of one each
# (which doubled the fsyncs per message and took the CPU the listener needs on two cores;
# per-row costs fall with batch size, most on PostgreSQL), while a lone message is moved
# after one quiet step. It delays only the pipeline, never an ACK.
GATHER_STEP_S = 0.005
GATHER_MAX_S = 0.2
MOVE_BATCH = 500
# Messages appended in this run are also handed to the mover in memory (up to this many),
# so it reads the journal file only for what an earlier run left or what overflowed:
# reading back and re-parsing each row cost the mover CPU the listener needs.
FRESH_MAX = 10_000
# Moved records are deleted this many at a time, not after every batch: each delete is a
# write transaction on the listener's file.
FORGET_EVERY = 2000
RETRY_MAX_S = 5.0
# A single message the inbox refused this many times with a data or integrity error is
# quarantined with the reason instead of holding back everything behind it.
POISON_ATTEMPTS = 3
_PERMANENT = (sqlite3.DataError, sqlite3.IntegrityError, psycopg.DataError, psycopg.IntegrityError)


class JournalFull(IngestError):
    """The inbox has not taken the journal's messages for a while; stop acknowledging."""

    code = "journal-full"


class JournalLocked(ConfigError):
    """Another process holds this journal (two listeners on one data directory)."""


@dataclass(frozen=True)
class JournalRecord:
    seq: int
    raw: bytes
    source: str
    peer: str
    received_at: datetime
    # None when the header no longer reads (a later version checks more than the one that
    # journaled it): the mover quarantines the record with ``problem`` as the reason.
    message: InboundMessage | None
    problem: str = ""


class IntakeJournal:
    """An append-only SQLite file (WAL, synchronous=FULL): one connection appends (the group
    committer: inline on the event loop or on its thread, never both at once), another
    reads and forgets (the mover). One process at a time:
    an exclusive lock on ``<path>.lock`` is held while open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal_id = ""
        self._lock_fd: int | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._next_seq = 1

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalLocked(f"intake journal {self.path} is in use by another process") from None
        self._lock_fd = fd
        try:
            # Created owner-only before SQLite opens it, whatever the process umask: SQLite
            # gives the -wal and -shm files the database file's mode, so the raw messages
            # stay private to this account even where no command set the umask.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            self._writer = self._connect()
            # SQLite's own checkpoint (by the commit that crosses 1000 pages, on this
            # connection) keeps the WAL file at its size: after a complete checkpoint the
            # next append starts over at its beginning. A checkpoint from another
            # connection lets it start over only if no append came in while it ran, and an
            # append that extends the file makes its fsync record the new size too (bare
            # loop here: 0.16-0.17 ms against 0.10-0.14 ms overwriting). One append in a
            # thousand pays the checkpoint.
            self._writer.executescript(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS messages ("
                " seq INTEGER PRIMARY KEY, received_at TEXT NOT NULL, source TEXT NOT NULL,"
                " peer TEXT NOT NULL, charset TEXT NOT NULL, repaired INTEGER NOT NULL,"
                " raw BLOB NOT NULL)"
            )
            self._writer.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', ?), ('format', ?)",
                (str(uuid.uuid4()), FORMAT),
            )
            meta = dict(self._writer.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format") != FORMAT:
                raise RuntimeError(f"intake journal {self.path} has format {meta.get('format')!r}")
            self.journal_id = meta["journal_id"]
            last = self._writer.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
            self._next_seq = int(last) + 1
            self._reader = self._connect()
            # Deleting moved records need not be durable: after a crash they come back,
            # below the inbox's recorded position, and are skipped and deleted again.
            self._reader.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def append(self, messages: Sequence[InboundMessage]) -> int:
        """Store the messages in one fsync'd transaction; returns the last sequence number.
        One writer thread only (the group committer)."""
        if self._writer is None:
            raise RuntimeError("intake journal is not open")
        first = self._next_seq
        rows = [
            (first + i, m.received_at.isoformat(), m.source, m.peer, m.charset, int(m.repaired), m.raw)
            for i, m in enumerate(messages)
        ]
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            self._writer.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._writer.execute("COMMIT")
        except BaseException:
            with suppress(Exception):
                self._writer.execute("ROLLBACK")
            raise
        self._next_seq = first + len(rows)
        return self._next_seq - 1

    def read_after(self, seq: int, limit: int = MOVE_BATCH) -> list[JournalRecord]:
        if self._reader is None:
            raise RuntimeError("intake journal is not open")
        rows = self._reader.execute(
            "SELECT seq, received_at, source, peer, charset, repaired, raw FROM messages"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ).fetchall()
        return [_record(*row) for row in rows]

    def forget_through(self, seq: int) -> None:
        """Delete records the inbox holds, keeping the highest (see the module docstring)."""
        if self._reader is None:
            raise RuntimeError("intake journal is not open")
        self._reader.execute("DELETE FROM messages WHERE seq < ?", (seq,))

    def close(self) -> None:
        for connection in (self._writer, self._reader):
            if connection is not None:
                with suppress(Exception):
                    connection.close()
        self._writer = self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


def _record(
    seq: int, received_at: str, source: str, peer: str, charset: str, repaired: int, raw: bytes
) -> JournalRecord:
    raw, at = bytes(raw), datetime.fromisoformat(received_at).astimezone(UTC)
    try:
        # Read again from the bytes the listener read it from: the same header.
        header = peek_header(raw)
    except IngestError as exc:
        return JournalRecord(int(seq), raw, source, peer, at, None, str(exc))
    message = InboundMessage(
        raw=raw,
        header=header,
        charset=charset,
        repaired=bool(repaired),
        source=source,
        peer=peer,
        received_at=at,
    )
    return JournalRecord(int(seq), raw, source, peer, at, message)


class JournaledInbox:
    """A MessageSink for the MLLP listener: ``commit_many`` returns once the messages are in
    the journal (receipts without an inbox id); the mover stores them in ``inbox``, then
    tells ``on_committed`` with the inbox's receipts (and counts duplicates in ``metrics``).
    """

    def __init__(
        self,
        journal: IntakeJournal,
        inbox: DatabaseInbox,
        *,
        on_committed: CommitListener | None = None,
        metrics: IntakeMetrics | None = None,
        max_backlog: int = 100_000,
    ) -> None:
        self._journal = journal
        self._inbox = inbox
        self._on_committed = on_committed
        self._metrics = metrics
        self._max_backlog = max_backlog
        self._moved = 0  # the inbox's recorded position: everything up to it is stored
        self._forgotten = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._fresh: collections.deque[JournalRecord] = collections.deque()
        self._fresh_lock = threading.Lock()
        self.last_moved_at = 0.0  # time.monotonic() of the last batch stored (benchmarks)

    def open(self) -> None:
        """Open (and lock) the journal and read how far the inbox has it: a second process on
        the same data directory fails here (JournalLocked). ``start`` opens it if needed."""
        if self._opened:
            return
        self._journal.open()
        try:
            self._moved = self._inbox.journal_position(self._journal.journal_id)
        except BaseException:
            self._journal.close()
            raise
        self._forgotten = self._moved
        self._set_backlog()
        self._opened = True

    def start(self) -> None:
        """Start moving, beginning with what a previous run left."""
        self.open()
        self._thread = threading.Thread(target=self._run, name="journal-mover", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Move everything journaled (for up to ``timeout`` if the inbox keeps failing:
        what is left stays in the journal for the next start), then close."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "journal mover did not finish",
                    extra={"event": "journal.stop_timeout", "backlog": self.backlog},
                )
                return  # the thread still uses the journal; the process is ending anyway
        self._journal.close()

    @property
    def backlog(self) -> int:
        return self._journal.last_seq - self._moved

    def wait_moved(self, timeout: float = 60.0) -> bool:
        """Wait until everything journaled so far is in the inbox."""
        target = self._journal.last_seq
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._moved < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- MessageSink --------------------------------------------------------------------

    def commit_many(self, messages: Sequence[InboundMessage]) -> list[Receipt]:
        if self.backlog >= self._max_backlog:
            raise JournalFull(f"intake journal holds {self.backlog} messages the inbox has not taken")
        last = self._journal.append(messages)
        with self._fresh_lock:
            if len(self._fresh) < FRESH_MAX:
                first = last - len(messages) + 1
                self._fresh.extend(
                    JournalRecord(first + i, m.raw, m.source, m.peer, m.received_at, m)
                    for i, m in enumerate(messages)
                )
        self._set_backlog()
        self._wake.set()
        return [Receipt(inbox_id=None, duplicate=False) for _ in messages]

    def quarantine(self, item: Rejected) -> int:
        return self._inbox.quarantine(item)

    # -- the mover ----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                moved = self._move_some()
            except Exception as exc:
                failures += 1
                delay = min(RETRY_MAX_S, 0.1 * 2 ** min(failures, 10))
                log.error(
                    "journal move failed",
                    extra={"event": "journal.move_failed", "error": type(exc).__name__, "retry_s": delay},
                )
                if self._metrics is not None:
                    self._metrics.journal_move_failures.inc()
                if not self._stop.is_set():
                    self._stop.wait(delay)
                elif failures >= 3:
                    return  # stopping, and the inbox keeps failing: the journal keeps them
                else:
                    time.sleep(min(delay, 0.5))
                continue
            failures = 0
            if moved >= MOVE_BATCH or (moved and self._stop.is_set()):
                continue  # more is waiting: no pause
            if not moved:
                if self._stop.is_set():
                    return
                self._wake.wait(1.0)
            self._gather()

    def _gather(self) -> None:
        deadline = time.monotonic() + GATHER_MAX_S
        waiting = self.backlog
        while not self._stop.is_set() and waiting < MOVE_BATCH and time.monotonic() < deadline:
            time.sleep(GATHER_STEP_S)
            before, waiting = waiting, self.backlog
            if waiting == before:
                return  # nothing came in meanwhile: the burst, if any, is over

    def _next_records(self) -> list[JournalRecord]:
        """The records after the inbox's position, in order: from memory when they are
        there without a gap, else from the journal file."""
        with self._fresh_lock:
            while self._fresh and self._fresh[0].seq <= self._moved:
                self._fresh.popleft()
            if self._fresh and self._fresh[0].seq == self._moved + 1:
                taken: list[JournalRecord] = []
                for record in itertools.islice(self._fresh, MOVE_BATCH):
                    if record.seq != self._moved + 1 + len(taken):
                        break  # an overflow gap: the rest comes from the file
                    taken.append(record)
                return taken
        return self._journal.read_after(self._moved)

    def _move_some(self) -> int:
        records = self._next_records()
        if not records:
            return 0
        readable = list(itertools.takewhile(lambda r: r.message is not None, records))
        if not readable:
            first = records[0]
            self._set_aside(first, f"acknowledged, but its header no longer reads: {first.problem}")
            return 1
        try:
            self._store(readable)
        except _PERMANENT:
            # Something in this batch the inbox refuses: take the records one by one, so
            # only the offending one is set aside.
            for record in readable:
                self._store_alone(record)
        if self._moved - self._forgotten >= FORGET_EVERY:
            self._journal.forget_through(self._moved)
            self._forgotten = self._moved
        return len(records)

    def _store(self, records: Sequence[JournalRecord]) -> None:
        messages = [r.message for r in records if r.message is not None]
        mark = JournalMark(self._journal.journal_id, records[-1].seq)
        receipts = self._inbox.commit_many(messages, journal=mark)
        for receipt, message in zip(receipts, messages, strict=True):
            if receipt.duplicate and self._metrics is not None:
                self._metrics.of(message.header.sender).duplicates.inc()
            notify_committed(self._on_committed, receipt, message, log, "journal.notify_failed")
        # After the notifications: whoever waits for the journal to be moved (wait_moved)
        # then finds the messages handed on, too.
        self._advance(mark.seq)

    def _store_alone(self, record: JournalRecord) -> None:
        for attempt in range(1, POISON_ATTEMPTS + 1):
            try:
                self._store([record])
                return
            except _PERMANENT as exc:
                if attempt == POISON_ATTEMPTS:
                    self._set_aside(record, f"acknowledged, but the inbox refused it ({type(exc).__name__})")

    def _set_aside(self, record: JournalRecord, reason: str) -> None:
        """Quarantine a journaled record the inbox cannot take, with the position, in one
        transaction: it was acknowledged, so it is kept, never dropped."""
        mark = JournalMark(self._journal.journal_id, record.seq)
        quarantine_id = self._inbox.quarantine(
            Rejected(record.raw, record.source, record.peer, reason, "inbox-refused", record.received_at),
            journal=mark,
        )
        self._advance(record.seq)
        log.error(
            "journaled message quarantined",
            extra={"event": "journal.quarantined", "quarantine_id": quarantine_id, "seq": record.seq},
        )

    def _advance(self, seq: int) -> None:
        with self._idle:
            self._moved = seq
            self.last_moved_at = time.monotonic()
            self._idle.notify_all()
        self._set_backlog()

    def _set_backlog(self) -> None:
        if self._metrics is not None:
            self._metrics.journal_backlog.set(self.backlog)
