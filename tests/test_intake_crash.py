"""Nothing acknowledged is lost: SIGKILL the listener mid-stream, restart, resend.

Four senders, 500 messages each, original mode (each waits for its ACK). The server
process is killed with SIGKILL once ~600 messages are acknowledged. Each sender then
resends everything it holds no ACK for (at most the one message in flight) to the
restarted server and carries on. Afterwards: every acknowledged message is in the inbox
exactly once, and a message that was stored before the kill but whose ACK was lost is
recognised as a resend (resend_count 1), not stored twice. The embedded default ACKs from
the intake journal, so "stored" at the kill means in the inbox or in the journal past the
position the inbox recorded; the restarted server moves those into the inbox first.
On PostgreSQL (no journal) each lone message is one autocommit statement whose audit entry
is linked into the chain afterwards: the entries the kill left pending are linked by the
restarted server, and every stored message is in exactly one intake audit entry.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

import audit
from connectors import MllpClient, peek_header
from connectors.journal_file import journal_id_of, pending_in_journal
from tests.deployments import msa
from tests.fixtures.messages import ORU_R01, with_control_id

REPO = Path(__file__).resolve().parents[1]
SENDERS, PER_SENDER, KILL_AFTER = 4, 500, 600


def _journaled(path: Path, positions: dict[str, int]) -> set[str]:
    """Control ids of the journal's records past the inbox's recorded position."""
    with sqlite3.connect(path) as journal:
        [journal_id] = journal.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
        rows = journal.execute("SELECT raw FROM messages WHERE seq > ?", (positions.get(journal_id, 0),))
        return {peek_header(raw).control_id for (raw,) in rows}


class Server:
    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **({"SIDECAR_DATABASE_URL": database_url} if database_url else {})}
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(self.data_dir), "--mllp-port", "0"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["mllp_port"]


@pytest.mark.parametrize("database", ["embedded", "postgresql"])
def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    engine = create_engine(url or f"sqlite:///{tmp_path / 'data' / 'sidecar.db'}")

    def query(sql: str) -> list[Any]:
        with engine.connect() as connection:
            return list(connection.execute(text(sql)).all())

    server = Server(tmp_path / "data", url)
    server.start()
    lock = threading.Lock()
    acked: set[str] = set()
    in_flight_at_kill: set[str] = set()
    restarted = threading.Event()
    killed = threading.Event()
    errors: list[BaseException] = []

    def sender(s: int) -> None:
        try:
            ids = [f"K{s}-{i:04d}" for i in range(PER_SENDER)]
            i = 0
            client = MllpClient().connect("127.0.0.1", server.port, timeout=30)
            while i < len(ids):
                try:
                    fields = msa(client.send(with_control_id(ORU_R01, ids[i]).encode()))
                except (ConnectionError, OSError):
                    client.close()
                    with lock:
                        in_flight_at_kill.add(ids[i])
                    assert restarted.wait(60), "server did not come back"
                    client = MllpClient().connect("127.0.0.1", server.port, timeout=30)
                    continue  # resend the message we hold no ACK for
                assert fields[1] == "AA" and fields[2] == ids[i], fields
                with lock:
                    acked.add(ids[i])
                    if len(acked) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                i += 1
            client.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(s,)) for s in range(SENDERS)]
    for t in threads:
        t.start()
    assert killed.wait(120)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)

    # What the killed process had made durable, read straight from its files: the inbox,
    # and (the embedded default) the intake journal's records the inbox had not taken yet.
    stored_before = {row[0] for row in query("SELECT control_id FROM inbox")}
    if url is None:
        positions: dict[str, int] = dict(query("SELECT journal_id, moved_seq FROM intake_journals"))  # type: ignore[arg-type]
        journal_file = tmp_path / "data" / "intake-journal.db"
        # What `sidecar stats` reports as inbox.journal, read as the dead process left the file.
        journal_id = journal_id_of(journal_file)
        assert journal_id is not None
        pending = pending_in_journal(journal_file, positions.get(journal_id, 0))
        journaled = _journaled(journal_file, positions)
        assert pending == len(journaled)
        stored_before |= journaled
    with lock:
        acked_before = set(acked)
    assert acked_before <= stored_before, "an ACKed message was not durable at SIGKILL"

    server.start()
    restarted.set()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(120) == 0

    rows = query("SELECT control_id, resend_count FROM inbox")
    counts: dict[str, int] = dict(rows)  # type: ignore[arg-type]
    assert len(rows) == len(counts) == SENDERS * PER_SENDER  # each exactly once
    assert acked == set(counts)  # everything was eventually acknowledged and stored
    resent_stored = in_flight_at_kill & stored_before
    for control_id in resent_stored:
        assert counts[control_id] == 1, "a resend of a stored message was not recognised"
    assert sum(counts.values()) == len(resent_stored)  # and nothing else counted as a resend

    # Every access audited: each stored message in exactly one intake entry (its resend in
    # one more), the chain intact, nothing left pending.
    assert audit.pending_count(engine) == 0
    assert audit.verify(engine).ok
    new: list[int] = []
    resent: list[int] = []
    for (detail,) in query("SELECT detail FROM audit_log WHERE action = 'messages.received'"):
        new += json.loads(detail)["new"]
        resent += json.loads(detail)["resent"]
    ids = {control_id: inbox_id for inbox_id, control_id in query("SELECT id, control_id FROM inbox")}
    assert sorted(new) == sorted(ids.values())
    assert sorted(resent) == sorted(ids[c] for c in resent_stored)
    engine.dispose()
