"""Finding audit entries the way auditors ask: by patient (``audit_patients``), by client
(the actor index), by time and by kind of action, newest or oldest first, a page at a time
keyed by sequence number."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from audit.auditevent import EntryView
from audit.log import ARCHIVED
from core.model_tables import AuditEntry, AuditPatient

__all__ = ["EntryFilter", "find_entries", "view_of"]


@dataclass(frozen=True)
class EntryFilter:
    """``at_from``/``at_before``: ISO instants as the log stores them (UTC, microseconds), a
    half-open range. ``actors``: any of them. ``actions``/``not_actions``: our action names."""

    patient: str | None = None
    actors: Sequence[str] = ()
    actions: Sequence[str] | None = None
    not_actions: Sequence[str] = ()
    at_from: str | None = None
    at_before: str | None = None
    after_seq: int | None = None  # the page's cursor: entries past this one
    newest_first: bool = False
    outcomes: Sequence[str] = ()


def _query(f: EntryFilter) -> Select[Any]:
    query = select(AuditEntry).where(AuditEntry.outcome != ARCHIVED)
    if f.patient is not None:
        query = query.join(AuditPatient, AuditPatient.seq == AuditEntry.seq).where(
            AuditPatient.patient == f.patient
        )
    if f.actors:
        query = query.where(AuditEntry.actor.in_(list(f.actors)))
    if f.actions is not None:
        query = query.where(AuditEntry.action.in_(list(f.actions)))
    if f.not_actions:
        query = query.where(AuditEntry.action.not_in(list(f.not_actions)))
    if f.outcomes:
        query = query.where(AuditEntry.outcome.in_(list(f.outcomes)))
    if f.at_from is not None:
        query = query.where(AuditEntry.at >= f.at_from)
    if f.at_before is not None:
        query = query.where(AuditEntry.at < f.at_before)
    if f.after_seq is not None:
        query = query.where(AuditEntry.seq < f.after_seq if f.newest_first else AuditEntry.seq > f.after_seq)
    return query.order_by(AuditEntry.seq.desc() if f.newest_first else AuditEntry.seq)


def view_of(entry: AuditEntry) -> EntryView:
    return EntryView(
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        outcome=entry.outcome,
        entity=entry.entity,
        detail=json.loads(entry.detail),
        seq=entry.seq,
    )


def find_entries(session: Session, f: EntryFilter, limit: int) -> list[EntryView]:
    """Up to ``limit`` entries matching ``f``, in sequence order (or newest first)."""
    rows = session.execute(_query(f).limit(limit)).scalars().all()
    return [view_of(e) for e in rows]
