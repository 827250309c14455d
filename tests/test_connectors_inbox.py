"""The durable inbox's group commit on both databases: new rows, resends of stored rows
and resends inside one batch, each with the receipt and the row state they must leave."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import audit
from connectors import InboundMessage
from connectors.inbox import DatabaseInbox
from connectors.inbox_postgres import COPY_MIN_ROWS, PostgresWriter, _Chainer
from core.db import Database
from core.settings import Settings
from core.tables import AuditEntry, InboxEntry
from sidecar.stats import collect
from tests.fixtures.messages import ORU_R01, inbound, with_control_id

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _message(control_id: str, at: datetime = T0) -> InboundMessage:
    return inbound(with_control_id(ORU_R01, control_id).encode(), peer="p:1", received_at=at)


@pytest.fixture
def db(db_on_both: Database) -> Database:
    return db_on_both


def inbox_rows(db: Database) -> dict[str, InboxEntry]:
    """The inbox's rows by control id."""
    with db.sessions() as s:
        return {e.control_id: e for e in s.execute(select(InboxEntry)).scalars()}


def test_a_batch_of_new_stored_and_repeated_messages(db: Database) -> None:
    inbox = DatabaseInbox(db)
    first = inbox.commit_many([_message("A"), _message("B")])
    assert [r.duplicate for r in first] == [False, False]
    later = T0 + timedelta(minutes=5)
    # C is new, A was stored before, D arrives twice in this very batch, C once more.
    second = inbox.commit_many(
        [
            _message("C", later),
            _message("A", later),
            _message("D", later),
            _message("D", later),
            _message("C", later),
        ]
    )
    inbox.close()
    assert [r.duplicate for r in second] == [False, True, False, True, True]
    rows = inbox_rows(db)
    assert second[1].inbox_id == first[0].inbox_id == rows["A"].id
    assert second[0].inbox_id == second[4].inbox_id == rows["C"].id
    assert second[2].inbox_id == second[3].inbox_id == rows["D"].id
    assert {k: r.resend_count for k, r in rows.items()} == {"A": 1, "B": 0, "C": 1, "D": 1}
    assert rows["A"].last_resend_at is not None
    assert rows["A"].last_resend_at.replace(tzinfo=UTC) == later
    # Ids follow arrival, which the dispatcher's id order relies on.
    assert rows["A"].id < rows["B"].id < rows["C"].id < rows["D"].id
    assert rows["C"].raw == _message("C").raw
    with db.sessions() as s:
        entries = list(s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars())
    assert [e.action for e in entries[-2:]] == ["messages.received", "messages.received"]


# PostgreSQL: a lone message's one statement, pipelined, then copied
@pytest.mark.parametrize("size", [1, 2, COPY_MIN_ROWS + 8])
def test_a_failed_batch_leaves_nothing_and_the_next_one_commits(db: Database, size: int) -> None:
    inbox = DatabaseInbox(db)
    broken = _message("E")
    object.__setattr__(broken, "raw", None)  # NOT NULL violation inside the transaction
    good = [_message(f"F{i:02d}") for i in range(max(1, size - 1))]
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
        inbox.commit_many([*good[: size - 1], broken])
    assert inbox_rows(db) == {}
    receipts = inbox.commit_many(good)
    inbox.close()
    assert not any(r.duplicate for r in receipts)
    assert set(inbox_rows(db)) == {m.header.control_id for m in good}


def test_a_batch_larger_than_one_round_trip_keeps_order_resends_and_atomicity(db: Database) -> None:
    # PostgreSQL copies a batch this large into a temporary table and upserts from it in one
    # statement: order, resend detection and all-or-nothing must hold as for small batches.
    inbox = DatabaseInbox(db)
    inbox.commit_many([_message("K40"), _message("K05")])
    ids = [f"K{i:02d}" for i in range(90)]
    batch = [_message(c) for c in ids] + [_message("K01"), _message("K70")]
    receipts = inbox.commit_many(batch)
    rows = inbox_rows(db)
    assert [r.inbox_id for r in receipts[:90]] == [rows[c].id for c in ids]
    assert [c for c, r in zip(ids, receipts, strict=False) if r.duplicate] == ["K05", "K40"]
    assert receipts[90].duplicate and receipts[90].inbox_id == rows["K01"].id
    assert receipts[91].duplicate and receipts[91].inbox_id == rows["K70"].id
    new = [rows[c].id for c in ids if c not in ("K05", "K40")]
    assert new == sorted(new)  # arrival order
    assert {c: rows[c].resend_count for c in ("K01", "K05", "K40", "K70", "K02")} == {
        "K01": 1, "K05": 1, "K40": 1, "K70": 1, "K02": 0,
    }  # fmt: skip

    broken = _message("L77")
    object.__setattr__(broken, "raw", None)  # fails after the others were written
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
        inbox.commit_many([_message(f"L{i:02d}") for i in range(77)] + [broken])
    inbox.close()
    assert not any(c.startswith("L") for c in inbox_rows(db))


def test_lone_messages_on_postgresql_are_audited_even_across_a_crash(pg_url: str, tmp_path: Path) -> None:
    # A lone message on PostgreSQL is one autocommit statement: the row and its audit entry,
    # written as pending and linked into the chain afterwards. The pending entries must
    # survive a crash before they are linked and be linked by the next run.
    db = Database(Settings(data_dir=tmp_path, database_url=pg_url))
    db.migrate()
    crashed = DatabaseInbox(db)
    writer = crashed._writer
    assert isinstance(writer, PostgresWriter)
    writer._chainer = _Chainer(db, gather_s=3600, sweep_s=3600)  # never links before the "crash"
    first = [crashed.commit_many([_message(c)])[0] for c in ("M1", "M2", "M3")]
    resent = crashed.commit_many([_message("M2", T0 + timedelta(minutes=1))])[0]
    assert [r.duplicate for r in first] == [False, False, False] and resent.duplicate
    assert resent.inbox_id == first[1].inbox_id
    assert audit.pending_count(db.engine) == 4  # stored, audited, not yet linked
    assert collect(db)["audit_pending"] == 4  # what `sidecar stats` shows an operator
    writer.release()  # the process dies: nothing more from it

    restarted = DatabaseInbox(db)
    restarted.commit_many([_message("M4"), _message("M5")])  # a batch: linked at once
    deadline = time.monotonic() + 30
    while audit.pending_count(db.engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    restarted.close()
    assert audit.pending_count(db.engine) == 0
    assert audit.verify(db.engine).ok
    with db.sessions() as s:
        entries = list(s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars())
    lone = [e for e in entries if e.entity == f"inbox/{first[0].inbox_id}-{first[2].inbox_id}"]
    assert len(lone) == 1  # the four lone messages, one entry as one batch of them would have
    assert json.loads(lone[0].detail) == {
        "new": [r.inbox_id for r in first],
        "resent": [first[1].inbox_id],
        "peers": ["p:1"],
        "repaired": 0,
        "bytes": 4 * len(_message("M1").raw),
    }
    assert lone[0].at == (T0 + timedelta(minutes=1)).isoformat(timespec="microseconds")
    assert {r.resend_count for r in inbox_rows(db).values()} == {0, 1}
    db.dispose()
