"""The outbox relay: publishes unsent outbox rows, marks them sent after the confirm.

At-least-once: a crash between the confirm and the commit republishes the batch, and
consumers drop the copies by CloudEvents id. Rows go out in id order, which is commit
order per patient because the pipeline processes one patient's messages in order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Select, Table, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

import audit
from core.children import process_name
from core.db import Database
from core.store import block_reason
from core.tables import PENDING_EVENTS_WHERE, EventTally, OutboxEvent
from worker.leakguard import LeakGuard, record_block
from worker.publishers import OutgoingEvent, Publisher

log = logging.getLogger("sidecar.worker.relay")

_OUTBOX = cast(Table, OutboxEvent.__table__)
_MARK_SENT = (
    _OUTBOX.update()
    .where(_OUTBOX.c.id == bindparam("k_id"))
    .values(sent_at=bindparam("at"), attempts=_OUTBOX.c.attempts + 1)
)

_MARK_ALL_SENT = (
    _OUTBOX.update()
    .where(_OUTBOX.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
    .values(sent_at=bindparam("at"), attempts=_OUTBOX.c.attempts + 1)
)


def waiting_events(limit: int) -> Select[tuple[int, str, str, str, bool]]:
    """The oldest events waiting to be sent, by the predicate of their partial index
    (ix_outbox_pending: on PostgreSQL the index on (sent_at, id) also held every event sent
    since the last vacuum, and a poll read them all)."""
    return (
        select(_OUTBOX.c.id, _OUTBOX.c.event_id, _OUTBOX.c.routing_key, _OUTBOX.c.body, _OUTBOX.c.screened)
        .where(text(PENDING_EVENTS_WHERE))
        .order_by(_OUTBOX.c.id)
        .limit(limit)
    )


# A CloudEvent's subject, as core.events writes it: found without parsing each event, as the
# relay publishes hundreds per round.
_SUBJECT = re.compile(r'"subject": ?"Patient/([^"]{1,64})"')


def subjects(bodies: Iterable[str]) -> list[str]:
    """The patients (pseudonyms) the events concern: an event published is a disclosure."""
    return sorted({m.group(1) for body in bodies if (m := _SUBJECT.search(body))})


class Relay:
    def __init__(
        self, db: Database, publisher: Publisher, *, batch_size: int = 500, guard: LeakGuard | None = None
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._batch_size = batch_size
        self._guard = guard
        self._name = process_name()
        insert = sqlite_insert if db.is_sqlite else pg_insert
        tally = insert(EventTally).values(relay=self._name, published=bindparam("count"))
        self._tally = tally.on_conflict_do_update(
            index_elements=["relay"], set_={"published": EventTally.published + tally.excluded.published}
        )

    def run_once(self) -> int:
        """Publish one batch; returns how many rows were sent (0: nothing to do)."""
        if not self._waiting():
            return 0
        with self._db.transaction() as session:
            query = waiting_events(self._batch_size)
            if not self._db.is_sqlite:
                query = query.with_for_update(skip_locked=True)  # several relays may run
            rows: Sequence[Any] = session.execute(query).all()
            if not rows:
                return 0
            now = datetime.now(UTC)
            passed = self._screen(session, rows, now)
            if not passed:
                return 1  # only blocked rows this round: look again at once
            events = [OutgoingEvent(r.event_id, r.routing_key, r.body.encode()) for r in passed]
            # On PublishError the transaction rolls back and the rows stay unsent.
            self._publisher.publish(events)
            if self._db.is_sqlite:
                session.execute(_MARK_SENT, [{"k_id": r.id, "at": now} for r in passed])
            else:
                # One statement for the round: PostgreSQL spent ~55 µs on each of a round's
                # UPDATEs by id, a third of its CPU in the production bench (docs/benchmarks.md).
                # On SQLite, where a statement is a function call, one per row cost the same.
                session.execute(_MARK_ALL_SENT, {"ids": [r.id for r in passed], "at": now})
            session.execute(self._tally, {"count": len(passed)})
            audit.append(
                session,
                actor="worker:relay",
                action="events.published",
                entity=f"outbox/{passed[0].id}-{passed[-1].id}",
                detail={"count": len(passed)},
                now=now,
                patients=subjects(r.body for r in passed),
            )
            return len(passed)

    def _waiting(self) -> bool:
        """Whether any row waits, read beside the writers: a round that finds none then
        takes no write lock (on SQLite, the one the pipeline and the inbox queue for)."""
        with self._db.reads() as session:
            return session.execute(waiting_events(1).with_only_columns(_OUTBOX.c.id)).first() is not None

    def drain(self) -> int:
        total = 0
        while sent := self.run_once():
            total += sent
        return total

    def _screen(self, session: Session, rows: Sequence[Any], now: datetime) -> list[Any]:
        """Block (and dead-letter, and audit) every event carrying a known identifier."""
        if self._guard is None:
            return list(rows)
        self._guard.forget()
        # Rows the pipeline screened when it wrote them (worker.batch) are not checked again.
        unscreened = [r for r in rows if not r.screened]
        verdicts = self._guard.check_events(session, [r.body for r in unscreened])
        found = {r.id: kinds for r, kinds in zip(unscreened, verdicts, strict=True)}
        passed: list[Any] = []
        for row in rows:
            kinds = found.get(row.id, [])
            if not kinds:
                passed.append(row)
                continue
            session.execute(
                _OUTBOX.update()
                .where(_OUTBOX.c.id == row.id)
                .values(blocked_at=now, block_reason=block_reason(row.event_id, kinds))
            )
            record_block(
                session, actor="worker:relay", outbox_id=row.id, event_id=row.event_id, kinds=kinds, now=now
            )
            log.error("event blocked by the leak guard", extra={"outbox_id": row.id, "kinds": kinds})
        return passed
