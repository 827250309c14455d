"""The MLLP intake journal: ACK after a local fsync, then into the inbox exactly once.

On both databases: journaled messages reach the inbox with resends recognised and the
listener told the inbox's receipts; a restart moves what a previous run left, and only
that; sequence numbers never repeat; a second process cannot take the journal; when the
inbox stops taking messages the journal fills to its bound and the listener answers AE
(over a real socket), then catches up; a record the inbox refuses, or whose header a later
version no longer reads, is quarantined with the reason instead of holding up the rest.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connectors import journal as journal_module
from connectors.base import InboundMessage, Receipt, Rejected, StoredReceipt
from connectors.inbox import DatabaseInbox, JournalMark
from connectors.journal import IntakeJournal, JournaledInbox, JournalLocked
from connectors.journal_file import journal_id_of, pending_in_journal
from connectors.mllp.server import MllpConfig, MllpServer
from core.db import Database
from core.tables import AuditEntry, QuarantineEntry
from tests.deployments import msa
from tests.fixtures.messages import ORU_R01, inbound, with_control_id
from tests.test_connectors_inbox import inbox_rows
from tests.test_connectors_server import ServerThread

pytestmark = pytest.mark.timeout(120)
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _message(control_id: str) -> InboundMessage:
    return inbound(with_control_id(ORU_R01, control_id).encode(), peer="10.0.0.7:4100", received_at=T0)


@pytest.fixture
def db(db_on_both: Database) -> Database:
    return db_on_both


def _quarantined(db: Database) -> list[QuarantineEntry]:
    with db.sessions() as s:
        return list(s.execute(select(QuarantineEntry)).scalars())


@contextmanager
def moving(path: Path, inbox: DatabaseInbox, **options: Any) -> Iterator[JournaledInbox]:
    """A journal at ``path`` with its mover into ``inbox``; stopped (everything moved) and
    the inbox closed on the way out."""
    journaled = JournaledInbox(IntakeJournal(path), inbox, **options)
    journaled.start()
    try:
        yield journaled
    finally:
        journaled.stop()
        inbox.close()


class Told:
    """The commit listener: what the journal reported once messages were in the inbox."""

    def __init__(self) -> None:
        self.receipts: list[tuple[Receipt, str]] = []

    def __call__(self, receipt: Receipt, message: InboundMessage) -> None:
        self.receipts.append((receipt, message.header.control_id))


def test_journaled_messages_reach_the_inbox_once_and_resends_are_recognised(
    db: Database, tmp_path: Path
) -> None:
    inbox = DatabaseInbox(db)
    inbox.commit_many([_message("OLD-1")])  # stored before, the direct way
    told = Told()
    with moving(tmp_path / "journal.db", inbox, on_committed=told) as journaled:
        receipts = journaled.commit_many([_message("NEW-1"), _message("OLD-1"), _message("NEW-2")])
        # Durable in the journal: no inbox id yet, so the listener notifies nobody itself.
        assert [r.inbox_id for r in receipts] == [None, None, None]
        journaled.commit_many([_message("NEW-1")])  # a resend of a journaled message
        assert journaled.wait_moved(30)
    rows = inbox_rows(db)
    assert sorted(rows) == ["NEW-1", "NEW-2", "OLD-1"]
    assert {c: rows[c].resend_count for c in rows} == {"NEW-1": 1, "NEW-2": 0, "OLD-1": 1}
    assert [(type(r), r.inbox_id, r.duplicate, c) for r, c in told.receipts] == [
        (StoredReceipt, rows["NEW-1"].id, False, "NEW-1"),
        (StoredReceipt, rows["OLD-1"].id, True, "OLD-1"),
        (StoredReceipt, rows["NEW-2"].id, False, "NEW-2"),
        (StoredReceipt, rows["NEW-1"].id, True, "NEW-1"),
    ]
    with db.sessions() as s:
        received = (
            s.execute(select(AuditEntry).where(AuditEntry.action == "messages.received")).scalars().all()
        )
    # Every journaled message is named in an audit entry written with its inbox row.
    named = {i for e in received for key in ("new", "resent") for i in json.loads(e.detail)[key]}
    assert {rows["NEW-1"].id, rows["NEW-2"].id, rows["OLD-1"].id} <= named


def test_a_restart_moves_what_the_previous_run_left_and_nothing_twice(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = IntakeJournal(path)
    journal.open()
    for i in range(1, 7):
        journal.append([_message(f"M-{i}")])
    inbox = DatabaseInbox(db)
    # The previous run stored M-1..M-4 (and recorded the position) but crashed before it
    # could forget them in the journal.
    four = [r.message for r in journal.read_after(0, 4) if r.message is not None]
    inbox.commit_many(four, journal=JournalMark(journal.journal_id, 4))
    journal.close()
    assert pending_in_journal(path, 4) == 2

    told = Told()
    with moving(path, inbox, on_committed=told) as journaled:
        assert journaled.wait_moved(30)
    rows = inbox_rows(db)
    assert sorted(rows) == [f"M-{i}" for i in range(1, 7)]
    assert all(row.resend_count == 0 for row in rows.values())  # nothing moved twice
    assert [c for _, c in told.receipts] == ["M-5", "M-6"]


def test_sequence_numbers_never_repeat_after_records_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = IntakeJournal(path)
    journal.open()
    last = journal.append([_message("A"), _message("B")])
    journal.forget_through(last)
    journal.close()
    journal = IntakeJournal(path)
    journal.open()
    try:
        assert journal.append([_message("C")]) == last + 1
        assert [r.seq for r in journal.read_after(last)] == [last + 1]
    finally:
        journal.close()


def test_a_second_process_cannot_take_the_journal(tmp_path: Path) -> None:
    first = IntakeJournal(tmp_path / "journal.db")
    first.open()
    try:
        with pytest.raises(JournalLocked):
            IntakeJournal(tmp_path / "journal.db").open()
    finally:
        first.close()
    again = IntakeJournal(tmp_path / "journal.db")  # free once the first one closed
    again.open()
    again.close()


class OutageInbox(DatabaseInbox):
    """The real inbox, unavailable while ``down`` is set (as a database outage looks to it)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.down = threading.Event()

    def commit_many(
        self, messages: Sequence[InboundMessage], *, journal: JournalMark | None = None
    ) -> list[StoredReceipt]:
        if self.down.is_set():
            raise sqlite3.OperationalError("unable to open database file")
        return super().commit_many(messages, journal=journal)


def test_when_the_inbox_is_down_the_journal_fills_to_its_bound_then_senders_get_ae(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two kept in memory for the mover, the third only in the file: both paths move.
    monkeypatch.setattr(journal_module, "FRESH_MAX", 2)
    inbox = OutageInbox(db)
    inbox.down.set()
    with moving(tmp_path / "journal.db", inbox, max_backlog=3) as journaled:
        harness = ServerThread(MllpServer(MllpConfig(port=0), journaled))
        try:
            with harness.client() as client:
                codes = [msa(client.send(with_control_id(ORU_R01, f"O-{i}").encode()))[1] for i in range(5)]
                assert codes == ["AA", "AA", "AA", "AE", "AE"]  # three kept, then the sender keeps them
                assert inbox_rows(db) == {}
                inbox.down.clear()
                assert journaled.wait_moved(30)
                assert msa(client.send(with_control_id(ORU_R01, "O-3").encode()))[1] == "AA"  # the resend
        finally:
            harness.close()
    assert sorted(inbox_rows(db)) == ["O-0", "O-1", "O-2", "O-3"]


class RefusingInbox(DatabaseInbox):
    """The real inbox, refusing any batch that holds one control id, as a constraint would."""

    def commit_many(
        self, messages: Sequence[InboundMessage], *, journal: JournalMark | None = None
    ) -> list[StoredReceipt]:
        if any(m.header.control_id == "POISON" for m in messages):
            raise sqlite3.IntegrityError("CHECK constraint failed")
        return super().commit_many(messages, journal=journal)


def test_a_record_the_inbox_refuses_is_quarantined_and_the_rest_go_on(db: Database, tmp_path: Path) -> None:
    inbox = RefusingInbox(db)
    with moving(tmp_path / "journal.db", inbox) as journaled:
        journaled.commit_many([_message("GOOD-1"), _message("POISON"), _message("GOOD-2")])
        assert journaled.wait_moved(30)
    assert sorted(inbox_rows(db)) == ["GOOD-1", "GOOD-2"]
    [kept] = _quarantined(db)
    assert kept.code == "inbox-refused"
    assert "IntegrityError" in kept.reason and "acknowledged" in kept.reason
    assert kept.raw == with_control_id(ORU_R01, "POISON").encode()  # kept, byte for byte
    journal_id = journal_id_of(tmp_path / "journal.db")
    assert journal_id is not None and inbox.journal_position(journal_id) == 3  # moved past it


def test_a_record_whose_header_no_longer_reads_is_quarantined(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = IntakeJournal(path)
    journal.open()
    journal.append([_message("BEFORE")])
    journal.close()
    # As an older version could have journaled it: MSH-10 longer than this version accepts.
    long_id = with_control_id(ORU_R01, "X" * 250).encode()
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO messages VALUES (2, ?, 'mllp', '10.0.0.7:4100', 'utf-8', 0, ?)",
            (T0.isoformat(), long_id),
        )
    journal = IntakeJournal(path)
    journal.open()
    journal.append([_message("AFTER")])
    journal.close()
    inbox = DatabaseInbox(db)
    with moving(path, inbox) as journaled:
        assert journaled.wait_moved(30)
    assert sorted(inbox_rows(db)) == ["AFTER", "BEFORE"]
    [kept] = _quarantined(db)
    assert kept.raw == long_id and "MSH-10" in kept.reason and kept.peer == "10.0.0.7:4100"


def test_quarantine_of_frames_that_are_not_hl7_goes_straight_to_the_inbox(
    db: Database, tmp_path: Path
) -> None:
    inbox = DatabaseInbox(db)
    with moving(tmp_path / "journal.db", inbox) as journaled:
        quarantine_id = journaled.quarantine(Rejected(b"junk", "mllp", "p:1", "not HL7", "bad-header", T0))
    assert [q.id for q in _quarantined(db)] == [quarantine_id]
