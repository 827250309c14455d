"""A listener process for bench/mllp.py: the sidecar's durable intake, or a bare echo.

    python -m bench.mllp_server sidecar [DATABASE_URL]  # MllpServer + the inbox (SQLite if no URL),
                                                        # with the intake journal as the settings default
    python -m bench.mllp_server sidecar-journal URL     # the same with the journal forced on
                                                        # (PostgreSQL's default is off)
    python -m bench.mllp_server echo  # ceiling: frames in, a fixed ACK out, nothing stored
    python -m bench.mllp_server fsync-floor  # echo + one fsync'd bare SQLite insert per read
    python -m bench.mllp_server pg-floor URL  # the same on PostgreSQL

Prints {"port": N} once listening; runs until SIGTERM. The sidecar then prints its commit
figures and when the last message reached the inbox (time.monotonic(), which on Linux is
one clock for every process) as a JSON line on stdout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg

from connectors.base import InboundMessage, Receipt
from connectors.hl7 import AckCode, build_ack, peek_header
from connectors.inbox import DatabaseInbox
from connectors.journal import IntakeJournal, JournaledInbox
from connectors.mllp.framing import Frame, FrameReader, encode_frame
from connectors.mllp.server import MllpConfig, MllpServer
from core.db import Database
from core.settings import Settings
from sidecar.cli import GIL_SWITCH_INTERVAL_S


async def echo_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = FrameReader(1 << 20)
        while data := await reader.read(65536):
            for event in framer.feed(data):
                if isinstance(event, Frame):
                    writer.write(encode_frame(build_ack(peek_header(event.payload), AckCode.AA)))
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def floor_server(commit: Callable[[list[bytes]], None]) -> asyncio.Server:
    """The echo server plus the least durable storage can cost: every frame that arrived in
    one read goes to ``commit`` (one transaction, on the event loop), then the ACKs. No
    inbox schema, no audit, no resend check, no thread."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = FrameReader(1 << 20)
        while data := await reader.read(65536):
            frames = [e.payload for e in framer.feed(data) if isinstance(e, Frame)]
            if frames:
                commit(frames)
                for payload in frames:
                    writer.write(encode_frame(build_ack(peek_header(payload), AckCode.AA)))
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def sqlite_floor(path: Path) -> Callable[[list[bytes]], None]:
    """A bare SQLite table (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")

    def commit(frames: list[bytes]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO raw (body) VALUES (?)", [(f,) for f in frames])
        conn.execute("COMMIT")

    return commit


def pg_floor(url: str) -> Callable[[list[bytes]], None]:
    """A bare PostgreSQL table (synchronous_commit on). One frame is one autocommit INSERT:
    a single round trip that commits, the least any durable write to this server costs."""
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS raw_floor (id BIGSERIAL PRIMARY KEY, body BYTEA NOT NULL)")

    def commit(frames: list[bytes]) -> None:
        if len(frames) == 1:
            conn.execute("INSERT INTO raw_floor (body) VALUES (%s)", (frames[0],))
            return
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany("INSERT INTO raw_floor (body) VALUES (%s)", [(f,) for f in frames])

    return commit


async def main(kind: str, url: str | None) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as `sidecar serve` does
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if kind in ("echo", "fsync-floor", "pg-floor"):
        if kind == "echo":
            server = await echo_server()
        elif kind == "pg-floor":
            if url is None:
                raise SystemExit("pg-floor needs a database URL")
            server = await floor_server(pg_floor(url))
        else:
            server = await floor_server(
                sqlite_floor(Path(tempfile.mkdtemp(prefix="bench-floor-")) / "floor.db")
            )
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await stop.wait()
        server.close()
        return
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="bench-mllp-")),
        database_url=url,
        mllp_journal=True if kind == "sidecar-journal" else None,
    )
    db = Database(settings)
    db.migrate()
    inbox = DatabaseInbox(db)
    journal: JournaledInbox | None = None
    if settings.effective_mllp_journal:
        journal = JournaledInbox(IntakeJournal(settings.intake_journal_file), inbox)
        journal.start()
    sink: JournaledInbox | DatabaseInbox = journal or inbox
    slowest, stored_at = [0.0], [0.0]
    commit_many = sink.commit_many

    def timed(messages: Sequence[InboundMessage]) -> Sequence[Receipt]:
        started = time.perf_counter()
        try:
            return commit_many(messages)
        finally:
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            stored_at[0] = time.monotonic()

    sink.commit_many = timed  # type: ignore[method-assign,assignment]
    mllp = MllpServer(
        MllpConfig(port=0, max_connections=64, max_in_flight=512), sink, commit_inline=journal is not None
    )
    await mllp.start()
    gc.freeze()  # as `sidecar serve` does
    print(json.dumps({"port": mllp.port}), flush=True)
    await stop.wait()
    await mllp.stop()
    if journal is not None:
        journal.stop()  # everything journaled is in the inbox when this returns
        stored_at[0] = journal.last_moved_at
    committer = mllp._committer
    print(
        json.dumps({"batches": committer.batches, "messages": committer.messages,
                    "commit_ms_avg": round(committer.commit_seconds / max(1, committer.batches) * 1e3, 2),
                    "commit_ms_max": round(slowest[0] * 1e3, 1), "stored_at": stored_at[0]}),
        flush=True,
    )  # fmt: skip
    inbox.close()
    db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
