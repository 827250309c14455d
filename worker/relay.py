"""The outbox relay: publishes unsent outbox rows, marks them sent after the confirm.

At-least-once: a crash between the confirm and the commit republishes the batch, and
consumers drop the copies by CloudEvents id. Rows go out in id order, which is commit
order per patient because the pipeline processes one patient's messages in order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.tables import DeadLetter, OutboxEvent
from worker.leakguard import LeakGuard
from worker.publishers import OutgoingEvent, Publisher

log = logging.getLogger("sidecar.worker.relay")


class Relay:
    def __init__(
        self, db: Database, publisher: Publisher, *, batch_size: int = 500, guard: LeakGuard | None = None
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._batch_size = batch_size
        self._guard = guard

    def run_once(self) -> int:
        """Publish one batch; returns how many rows were sent (0: nothing to do)."""
        with self._db.transaction() as session:
            query = (
                select(OutboxEvent)
                .where(OutboxEvent.sent_at.is_(None), OutboxEvent.blocked_at.is_(None))
                .order_by(OutboxEvent.id)
            )
            query = query.limit(self._batch_size)
            if not self._db.is_sqlite:
                query = query.with_for_update(skip_locked=True)  # several relays may run
            rows = session.execute(query).scalars().all()
            if not rows:
                return 0
            now = datetime.now(UTC)
            rows = self._screen(session, rows, now)
            if not rows:
                return 1  # only blocked rows this round: look again at once
            events = [OutgoingEvent(r.event_id, r.routing_key, r.body.encode()) for r in rows]
            # On PublishError the transaction rolls back and the rows stay unsent.
            self._publisher.publish(events)
            for row in rows:
                row.sent_at = now
                row.attempts += 1
            audit.append(
                session,
                actor="worker:relay",
                action="events.published",
                entity=f"outbox/{rows[0].id}-{rows[-1].id}",
                detail={"count": len(rows)},
                now=now,
            )
            return len(rows)

    def drain(self) -> int:
        total = 0
        while sent := self.run_once():
            total += sent
        return total

    def _screen(self, session: Session, rows: Sequence[OutboxEvent], now: datetime) -> list[OutboxEvent]:
        """Block (and dead-letter, and audit) every event carrying a known identifier."""
        if self._guard is None:
            return list(rows)
        self._guard.forget()
        passed: list[OutboxEvent] = []
        for row in rows:
            kinds = self._guard.check(session, row.body)
            if not kinds:
                passed.append(row)
                continue
            reason = f"event {row.event_id} carries identifier(s) of kind {', '.join(kinds)}; not published"
            row.blocked_at, row.block_reason = now, reason
            session.add(DeadLetter(stage="relay", code="identifier-leak", reason=reason, created_at=now))
            audit.append(
                session,
                actor="worker:relay",
                action="event.blocked",
                entity=f"outbox/{row.id}",
                outcome=audit.Outcome.FAILURE,
                detail={"event": row.event_id, "kinds": kinds},
                now=now,
            )
            log.error("event blocked by the leak guard", extra={"outbox_id": row.id, "kinds": kinds})
        return passed
