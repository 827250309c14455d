"""Hands acknowledged inbox entries to the Celery lanes, in inbox id order.

A relay, like the outbox's: it reads RECEIVED entries above its high-water mark from the
database and sends each to its patient's lane. Dispatching from the database rather than
from the commit callback keeps arrival order through a broker outage: nothing newer is
sent while an older entry still waits, and after a restart everything not yet processed
is sent again (a second copy is a no-op: the pipeline skips processed entries).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from connectors.hl7 import peek_header
from connectors.hl7.routing import lane_of, patient_route_key
from core.db import Database
from core.errors import IngestError
from core.tables import InboxEntry, InboxStatus

log = logging.getLogger("sidecar.worker.dispatch")

SendToLane = Callable[[int, int], None]  # (inbox_id, lane); raises when the broker refuses


class InboxDispatcher:
    def __init__(self, db: Database, send: SendToLane, *, lanes: int, batch: int = 500) -> None:
        self._db = db
        self._send = send
        self._lanes = lanes
        self._batch = batch
        self._high_water = 0

    def lane(self, raw: bytes) -> int:
        try:
            return lane_of(patient_route_key(raw, peek_header(raw)), self._lanes)
        except IngestError:
            return 0  # stored messages always have a header; be safe anyway

    def run_once(self) -> int:
        with self._db.sessions() as session:
            rows = session.execute(
                select(InboxEntry.id, InboxEntry.raw)
                .where(InboxEntry.status == InboxStatus.RECEIVED, InboxEntry.id > self._high_water)
                .order_by(InboxEntry.id)
                .limit(self._batch)
            ).all()
        for inbox_id, raw in rows:
            self._send(inbox_id, self.lane(raw))  # a failure stops here: order is kept
            self._high_water = inbox_id
        return len(rows)

    def rewind(self) -> None:
        """Send everything still RECEIVED again (a task may have been lost)."""
        self._high_water = 0
