"""What both inbox writers share: the inbox's columns, a message as a row, and the end of a
batch's transaction (the resend counts, the journal position, one audit entry)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import audit
from connectors.base import InboundMessage, StoredReceipt
from core.tables import InboxStatus

__all__ = [
    "COLUMNS", "CONTROL_ID", "LOOKUP_KEYS", "RECEIVED_AT", "ROWS_PER_STATEMENT", "SENDER",
    "Batch", "JournalMark", "discard", "finish_batch", "identity", "received_entry", "row_values",
]  # fmt: skip

ROWS_PER_STATEMENT = 1000  # x 13 columns: well under SQLite's parameter limit

COLUMNS = (
    "source", "peer", "sender", "control_id", "message_type", "received_at",
    "raw", "charset", "repaired", "status", "resend_count", "attempts",
)  # fmt: skip
SENDER, CONTROL_ID, RECEIVED_AT = (COLUMNS.index(c) for c in ("sender", "control_id", "received_at"))
LOOKUP_KEYS = 1000  # x 2 parameters per resend lookup


@dataclass(frozen=True)
class JournalMark:
    """How far an intake journal's records are stored (connectors.journal): recorded in the
    transaction that stores them, so a record reaches the inbox exactly once."""

    journal_id: str
    seq: int


@dataclass(frozen=True)
class Batch:
    """What a writer commits in one transaction: the messages as they came, the resends
    among them (by sender and control id, beyond the first), one row per distinct message
    (``COLUMNS``, as the dialect stores them) and the journal position they carry."""

    messages: Sequence[InboundMessage]
    extra: dict[tuple[str, str], int]
    rows: list[list[Any]]
    journal: JournalMark | None


def identity(value: Any) -> Any:
    return value


def row_values(m: InboundMessage) -> tuple[Any, ...]:
    # Order of COLUMNS.
    return (
        m.source,
        m.peer,
        m.header.sender,
        m.header.control_id,
        m.header.message_type[:32],
        m.received_at,
        m.raw,
        m.charset,
        m.repaired,
        str(InboxStatus.RECEIVED),
        0,
        0,
    )


def finish_batch(
    cursor: Any,
    placeholder: str,
    messages: Sequence[InboundMessage],
    extra: dict[tuple[str, str], int],
    by_key: dict[tuple[str, str], tuple[int, int]],
    journal: JournalMark | None,
    *,
    head: tuple[Any, Any] | None = None,
) -> list[StoredReceipt]:
    """What every commit path writes once the rows are in, in the same transaction: the
    resends within the batch, the audit entry and the journal position. ``head``: the
    audit chain head PostgreSQL locked first (SQLite's BEGIN IMMEDIATE already holds it)."""
    _count_batch_resends(cursor, placeholder, extra, by_key)
    receipts = _receipts(messages, by_key)
    _audit_batch(cursor, placeholder, head is not None, messages, receipts, head=head)
    _record_journal(cursor, placeholder, journal)
    return receipts


def _record_journal(cursor: Any, placeholder: str, journal: JournalMark | None) -> None:
    if journal is None:
        return
    p = placeholder
    cursor.execute(
        f"INSERT INTO intake_journals (journal_id, moved_seq) VALUES ({p}, {p}) "
        "ON CONFLICT (journal_id) DO UPDATE SET moved_seq = excluded.moved_seq",
        (journal.journal_id, journal.seq),
    )


def _count_batch_resends(
    cursor: Any,
    placeholder: str,
    extra: dict[tuple[str, str], int],
    by_key: dict[tuple[str, str], tuple[int, int]],
) -> None:
    """Resends within one batch beyond the first occurrence (only the first became a row)."""
    p = placeholder
    for key, n in extra.items():
        cursor.execute(
            f"UPDATE inbox SET resend_count = resend_count + {p} WHERE id = {p}", (n, by_key[key][0])
        )


def _receipts(
    messages: Sequence[InboundMessage], by_key: dict[tuple[str, str], tuple[int, int]]
) -> list[StoredReceipt]:
    """One receipt per message, in order; a repeat within the batch is a duplicate too."""
    receipts: list[StoredReceipt] = []
    seen: set[tuple[str, str]] = set()
    for m in messages:
        key = (m.header.sender, m.header.control_id)
        inbox_id, resends = by_key[key]
        receipts.append(StoredReceipt(inbox_id=inbox_id, duplicate=resends > 0 or key in seen))
        seen.add(key)
    return receipts


def _audit_batch(
    cursor: Any,
    placeholder: str,
    lock_head: bool,
    messages: Sequence[InboundMessage],
    receipts: list[StoredReceipt],
    *,
    head: tuple[Any, Any] | None = None,
) -> None:
    """One entry for the whole batch: which inbox rows were written, from where."""
    sources = sorted({m.source for m in messages})
    entity, detail = received_entry(
        new={r.inbox_id for r in receipts if not r.duplicate},
        resent={r.inbox_id for r in receipts if r.duplicate},
        peers={m.peer for m in messages},
        repaired=sum(m.repaired for m in messages),
        size=sum(len(m.raw) for m in messages),
    )
    audit.append_dbapi(
        cursor,
        placeholder=placeholder,
        lock_head=lock_head,
        head=head,
        actor="connector:" + "+".join(sources),
        action="messages.received",
        entity=entity,
        detail=detail,
        now=max(m.received_at for m in messages),
    )


def received_entry(
    *, new: set[int], resent: set[int], peers: set[str], repaired: int, size: int
) -> tuple[str, dict[str, Any]]:
    """The entity and detail of a ``messages.received`` entry, for a batch and for a run of
    lone messages linked together (_one_entry_per_run); _UPSERT_LONE_PG writes one lone
    message's in SQL."""
    ids = new | resent
    return f"inbox/{min(ids)}-{max(ids)}", {
        "new": sorted(new),
        "resent": sorted(resent),
        "peers": sorted(peers),
        "repaired": repaired,
        "bytes": size,
    }


def discard(*connections: Any) -> None:
    """Connections a failure may have left in any state: invalidated, never reused."""
    for connection in connections:
        if connection is not None:
            with suppress(Exception):
                connection.invalidate()
            with suppress(Exception):
                connection.close()
