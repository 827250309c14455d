"""The database-backed MessageSink: the inbox in core's tables.

``commit`` returns only after the transaction holding the raw bytes (and its audit entry)
has committed; the listener ACKs after that, never before. A resend of the same
(sender, control id) is recorded on the existing row and reported as a duplicate.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

import audit
from connectors.base import InboundMessage, MessageSink, Receipt, Rejected
from core.db import Database
from core.tables import InboxEntry, InboxStatus, QuarantineEntry

log = logging.getLogger("sidecar.connectors.inbox")


class DatabaseInbox(MessageSink):
    def __init__(self, db: Database) -> None:
        self._db = db

    def commit(self, message: InboundMessage) -> Receipt:
        try:
            return self._commit_once(message)
        except IntegrityError:
            # Two connections raced on the same resend: the loser is a duplicate.
            return self._commit_once(message)

    def _commit_once(self, message: InboundMessage) -> Receipt:
        header = message.header
        with self._db.transaction() as session:
            existing = session.execute(
                select(InboxEntry)
                .where(InboxEntry.sender == header.sender, InboxEntry.control_id == header.control_id)
                .with_for_update()
            ).scalar_one_or_none()
            if existing is not None:
                existing.resend_count += 1
                existing.last_resend_at = message.received_at
                audit.append(
                    session,
                    actor=f"connector:{message.source}",
                    action="message.resend",
                    entity=f"inbox/{existing.id}",
                    detail={"peer": message.peer, "resends": existing.resend_count},
                    now=message.received_at,
                )
                return Receipt(inbox_id=existing.id, duplicate=True)
            entry = InboxEntry(
                source=message.source,
                peer=message.peer,
                sender=header.sender,
                control_id=header.control_id,
                message_type=header.message_type,
                received_at=message.received_at,
                raw=message.raw,
                charset=message.charset,
                repaired=message.repaired,
                status=InboxStatus.RECEIVED,
                resend_count=0,
                attempts=0,
            )
            session.add(entry)
            session.flush()
            audit.append(
                session,
                actor=f"connector:{message.source}",
                action="message.received",
                entity=f"inbox/{entry.id}",
                detail={
                    "peer": message.peer,
                    "type": header.message_type,
                    "bytes": len(message.raw),
                    "charset": message.charset,
                    "repaired": message.repaired,
                },
                now=message.received_at,
            )
            return Receipt(inbox_id=entry.id, duplicate=False)

    def quarantine(self, item: Rejected) -> int:
        with self._db.transaction() as session:
            row = QuarantineEntry(
                source=item.source,
                peer=item.peer,
                received_at=item.received_at,
                code=item.code,
                reason=item.reason,
                raw=item.raw,
            )
            session.add(row)
            session.flush()
            audit.append(
                session,
                actor=f"connector:{item.source}",
                action="message.quarantined",
                entity=f"quarantine/{row.id}",
                outcome=audit.Outcome.FAILURE,
                detail={"peer": item.peer, "code": item.code, "bytes": len(item.raw)},
                now=item.received_at,
            )
            log.warning("quarantined", extra={"quarantine_id": row.id, "code": item.code, "peer": item.peer})
            return row.id
