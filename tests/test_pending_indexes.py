"""The events waiting for the relay are found by their own partial index (migration 0021,
issue 16), on a busy new table where most events have been sent and the planner has no
statistics yet (autovacuum off, as before its first round). On PostgreSQL the index on
(sent_at, id) then also holds an entry for every event sent since the last vacuum, and the
relay's poll read them all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, update

from core.db import MIGRATIONS, Database
from core.settings import Settings
from core.tables import InboxEntry, InboxStatus, OutboxEvent
from sidecar.stats import collect
from tests.plans import query_plan
from worker.pipeline import pending_inbox_ids
from worker.publishers import LocalBus, OutgoingEvent
from worker.relay import Relay, waiting_events

SENT, WAITING = 6000, 150


def _events(db: Database, first: int, count: int) -> None:
    now = datetime.now(UTC)
    with db.transaction() as s:
        s.execute(
            insert(OutboxEvent),
            [{"event_id": f"e-{i}", "routing_key": "fhir.Observation.created", "body": "{}" + " " * 900,
              "created_at": now, "attempts": 0, "screened": True} for i in range(first, first + count)],
        )  # fmt: skip


@pytest.fixture
def busy(db_on_both: Database) -> Database:
    """SENT events published by a relay and WAITING more; as many inbox entries, all but
    the last WAITING processed."""
    db, now = db_on_both, datetime.now(UTC)
    if not db.is_sqlite:
        with db.transaction() as s:
            for table in ("outbox", "inbox"):
                s.connection().exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    _events(db, 0, SENT)
    assert Relay(db, LocalBus(), batch_size=2000).drain() == SENT
    _events(db, SENT, WAITING)
    with db.transaction() as s:
        s.execute(
            insert(InboxEntry),
            [{"source": "mllp", "peer": "127.0.0.1:1", "sender": "LAB|H", "control_id": f"c-{i}",
              "message_type": "ORU^R01", "received_at": now, "raw": b"MSH|^~\\&|" + b" " * 900,
              "charset": "utf-8", "repaired": False, "status": InboxStatus.RECEIVED, "resend_count": 0,
              "attempts": 0} for i in range(SENT + WAITING)],
        )  # fmt: skip
    with db.transaction() as s:
        s.execute(update(InboxEntry).where(InboxEntry.id <= SENT).values(status=InboxStatus.PROCESSED))
    return db


def test_the_relay_polls_by_the_waiting_events_index(busy: Database) -> None:
    for query in (waiting_events(2000), waiting_events(1)):
        plan = query_plan(busy, query)
        if busy.is_sqlite:
            # No dead index entries on SQLite: either index finds the waiting events, in order.
            assert "USING" in plan and "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
        else:
            assert "ix_outbox_pending" in plan and "Bitmap" not in plan and "Sort" not in plan, plan


def test_the_waiting_rows_are_exactly_those_not_yet_sent_or_processed(busy: Database) -> None:
    assert pending_inbox_ids(busy) == list(range(SENT + 1, SENT + WAITING + 1))
    counts = collect(busy)
    assert counts["inbox"]["pending"] == WAITING
    assert counts["events"] == {"published": SENT, "pending": WAITING, "blocked": 0}
    bus, sent = LocalBus(), list[OutgoingEvent]()
    bus.subscribe(sent.append)
    assert Relay(busy, bus, batch_size=100).drain() == WAITING  # added to the tally
    assert [e.event_id for e in sent] == [f"e-{i}" for i in range(SENT, SENT + WAITING)]  # in id order
    assert collect(busy)["events"] == {"published": SENT + WAITING, "pending": 0, "blocked": 0}


def test_events_sent_before_the_tallies_are_tallied_by_the_migration(tmp_path: Path) -> None:
    db = Database(Settings(data_dir=tmp_path))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0020")
    now = datetime.now(UTC)
    with db.engine.begin() as connection:
        for i in range(7):
            connection.exec_driver_sql(
                "INSERT INTO outbox (event_id, routing_key, body, created_at, attempts, screened, sent_at) "
                "VALUES (?, 'fhir.Patient.created', '{}', ?, 1, 1, ?)",
                (f"old-{i}", now.isoformat(), now.isoformat() if i < 5 else None),
            )
    db.migrate()
    assert collect(db)["events"] == {"published": 5, "pending": 2, "blocked": 0}
    db.dispose()
