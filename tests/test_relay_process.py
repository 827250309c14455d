"""`sidecar serve` runs the relay in a process of its own (sidecar/relay_process.py), so
its rounds do not hold the listener's interpreter. Killed, it is started again and what it
had not marked sent is published then: every outbox row ends up sent, none is lost."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from sqlalchemy import func, select

from core.db import Database
from core.settings import Settings
from core.tables import AuditEntry, OutboxEvent
from tests.deployments import wait_for
from tests.fixtures.load import ack_codes, feed
from tests.test_pipeline_batches import _children, _Load, _per_connection, _processed, _serve, _stop

PATIENTS, PER_PATIENT = 20, 10


def _outbox(db: Database) -> tuple[int, int]:
    """(rows, rows not yet sent)."""
    with db.sessions() as s:
        rows = s.execute(select(func.count()).select_from(OutboxEvent)).scalar_one()
        unsent = s.execute(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.sent_at.is_(None))
        ).scalar_one()
    return int(rows), int(unsent)


def test_the_relay_runs_apart_and_a_killed_relay_loses_no_event(tmp_path: Path) -> None:
    data = tmp_path / "data"
    serve, listening = _serve(data)
    db = Database(Settings(data_dir=data))
    try:
        [relay] = listening["relay_pids"]
        assert relay in _children(serve.pid)
        assert Path(f"/proc/{relay}/comm").read_text().strip() == "sc-relay-0"
        total = PATIENTS * PER_PATIENT
        os.kill(relay, signal.SIGSTOP)  # frozen mid-way: the events pile up unsent
        load = _Load(listening["mllp_port"], _per_connection(feed(PATIENTS, PER_PATIENT)))
        load.start()
        load.join(300)
        assert load.error is None and ack_codes(load.acks) == ["AA"] * total
        wait_for(lambda: _processed(db) == total, timeout=300, interval=0.2)
        assert _outbox(db)[1] >= total  # the listener and the pipeline went on without it
        os.kill(relay, signal.SIGKILL)
        # serve starts a new relay process, which publishes what the killed one left.
        wait_for(lambda: _outbox(db)[1] == 0, timeout=120, interval=0.2)
        assert relay not in _children(serve.pid)
        _stop(serve, data)
        assert "child process died; starting it again" in (data / "serve.log").read_text()
        rows, unsent = _outbox(db)  # the stop's drain stored and published the last summaries
        assert unsent == 0
        with db.sessions() as s:
            published = s.execute(
                select(AuditEntry.detail).where(AuditEntry.action == "events.published")
            ).scalars()
            # A round killed before its commit marked and audited nothing: each row once.
            assert sum(json.loads(detail)["count"] for detail in published) == rows
    finally:
        if serve.poll() is None:
            serve.kill()
        db.dispose()
