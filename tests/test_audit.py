from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, text

import audit
from core.db import Database
from core.tables import AuditEntry


@pytest.fixture
def db(db_on_both: Database) -> Database:
    return db_on_both


def _append(db: Database, n: int, actor: str = "test") -> None:
    for i in range(n):
        with db.transaction() as s:
            audit.append(s, actor=actor, action="thing.read", entity=f"thing/{i}", detail={"i": i})


def test_chain_verifies_and_counts(db: Database) -> None:
    _append(db, 10)
    report = audit.verify(db.engine)
    assert report.ok and report.entries == 10


@pytest.mark.parametrize(
    ("tamper", "broken"),
    [
        ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 4", 4),
        ("UPDATE audit_log SET detail = '{}' WHERE seq = 1", 1),
        ("DELETE FROM audit_log WHERE seq = 6", 6),
        ("UPDATE audit_log SET hash = prev_hash WHERE seq = 9", 9),
    ],
)
def test_tampering_is_found_at_the_first_broken_entry(db: Database, tamper: str, broken: int) -> None:
    _append(db, 10)
    with db.engine.begin() as conn:
        conn.execute(text(tamper))
    report = audit.verify(db.engine)
    assert not report.ok
    assert report.first_broken == broken


def test_truncating_the_tail_is_found(db: Database) -> None:
    _append(db, 5)
    with db.transaction() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.seq == 5))
    report = audit.verify(db.engine)
    assert not report.ok and report.first_broken == 5


def test_rolled_back_action_leaves_no_entry(db: Database) -> None:
    _append(db, 2)
    with pytest.raises(RuntimeError), db.transaction() as s:
        audit.append(s, actor="test", action="x", entity="y")
        raise RuntimeError("the audited action failed")
    report = audit.verify(db.engine)
    assert report.ok and report.entries == 2


def test_concurrent_appenders_never_fork_the_chain(db: Database) -> None:
    threads = [threading.Thread(target=_append, args=(db, 25, f"t{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = audit.verify(db.engine)
    assert report.ok and report.entries == 100
