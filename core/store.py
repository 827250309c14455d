"""The de-identified resource store: versioned upsert plus outbox, in the caller's transaction.

Shared by the pipeline (worker) and the sandbox, so it lives in core. Callers must hand
in resources that are already de-identified; nothing here can tell.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.events import ChangeKind, resource_event, resource_routing_key
from core.tables import OutboxEvent, PatientPhi, PhiToken, ReidEntry, Resource, ResourceHistory


@dataclass(frozen=True)
class StoredChange:
    resource_type: str
    resource_id: str
    version: int
    change: ChangeKind | None  # None: identical content, nothing new stored or published
    stale: bool = False  # not stored: a newer inbox entry already stated it

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(resource: dict[str, Any]) -> str:
    # meta is ours (version, timestamp): comparing without it makes a replay of the same
    # message a no-op instead of a new version.
    content = {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def put_resource(
    session: Session,
    resource: dict[str, Any],
    *,
    patient: str | None,
    origin: str,
    now: datetime,
    source_seq: int | None = None,
) -> StoredChange:
    """Store a new version if the content changed. ``source_seq``: the inbox entry stating
    it, remembered as the resource's newest; an entry older than that (a replay, a retried
    dead letter) stores nothing and gets a ``stale`` change: what the newer one said stands."""
    rtype, rid = resource["resourceType"], resource["id"]
    digest = content_hash(resource)
    head = session.execute(
        select(Resource).where(Resource.resource_type == rtype, Resource.resource_id == rid).with_for_update()
    ).scalar_one_or_none()
    stated = head.source_seq if head is not None else None
    if head is not None and stated is not None and source_seq is not None and source_seq < stated:
        return StoredChange(rtype, rid, head.version, None, stale=True)
    newest = _newest(stated, source_seq)
    if head is not None and head.content_hash == digest:
        head.source_seq = newest
        return StoredChange(rtype, rid, head.version, None)

    version = 1 if head is None else head.version + 1
    change = ChangeKind.CREATED if head is None else ChangeKind.UPDATED
    meta = dict(resource.get("meta") or {})
    meta.update(versionId=str(version), lastUpdated=now.isoformat())
    stored = {**resource, "meta": meta}
    body = canonical_json(stored)
    if head is None:
        session.add(
            Resource(
                resource_type=rtype,
                resource_id=rid,
                version=version,
                patient=patient,
                body=body,
                content_hash=digest,
                updated_at=now,
                source_seq=newest,
            )
        )
    else:
        head.version, head.patient, head.body, head.content_hash, head.updated_at = (
            version,
            patient,
            body,
            digest,
            now,
        )
        head.source_seq = newest
    session.add(
        ResourceHistory(
            resource_type=rtype, resource_id=rid, version=version, body=body, origin=origin, recorded_at=now
        )
    )
    event = resource_event(stored, change, patient=patient, time=now)
    add_outbox(session, event, resource_routing_key(rtype, change), now=now)
    return StoredChange(rtype, rid, version, change)


def _newest(stored: int | None, incoming: int | None) -> int | None:
    return incoming if stored is None else stored if incoming is None else max(stored, incoming)


def stored_head(
    session: Session, rtype: str, rid: str, *, lock: bool = False
) -> tuple[dict[str, Any] | None, int | None]:
    """The stored resource (or None) and the newest inbox entry that stated it."""
    query = select(Resource.body, Resource.source_seq).where(
        Resource.resource_type == rtype, Resource.resource_id == rid
    )
    row = session.execute(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        return None, None
    return json.loads(row.body), row.source_seq


def add_outbox(session: Session, event: dict[str, Any], routing_key: str, *, now: datetime) -> None:
    session.add(
        OutboxEvent(event_id=event["id"], routing_key=routing_key, body=canonical_json(event), created_at=now)
    )


def resources_of_patient(session: Session, patient: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Resource.body)
        .where(Resource.patient == patient)
        .order_by(Resource.resource_type, Resource.resource_id)
    ).scalars()
    return [json.loads(body) for body in rows]


def add_reid_entries(session: Session, entries: dict[str, tuple[str, str]], *, now: datetime) -> None:
    """Remember which identifier each pseudonym was made from (idempotent; first wins).

    ``entries``: pseudonym -> (authority, identifier) as the source sent them. Only
    ``sidecar reid`` reads them back; see sidecar/reid.py.
    """
    if not entries:
        return
    rows = [
        {"pseudonym": p, "authority": a, "identifier": i, "first_seen_at": now}
        for p, (a, i) in entries.items()
    ]
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    session.execute(insert(ReidEntry).values(rows).on_conflict_do_nothing())


# Dates are left out: the scrubber shifts every date it recognises anyway, and a patient's
# visit dates would grow this without end.
_REMEMBERED_KINDS = frozenset({"NAME", "ID", "ADDRESS", "PHONE", "EMAIL"})
MAX_KNOWN_VALUES = 2000  # per patient: a bound on what one message's scrubber is built from


def add_patient_phi(session: Session, patients: Sequence[str], phi_values: Mapping[str, str]) -> None:
    """Remember what a message reported about its patient(s) (idempotent)."""
    rows = [
        {
            "patient": patient,
            "digest": hashlib.sha256(f"{kind}\x00{value}".encode()).hexdigest(),
            "kind": kind,
            "value": value,
        }
        for patient in patients
        for value, kind in phi_values.items()
        if kind in _REMEMBERED_KINDS and value.strip()
    ]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    session.execute(insert(PatientPhi).values(rows).on_conflict_do_nothing())


def known_phi(session: Session, patients: Sequence[str]) -> dict[str, str]:
    """value -> kind, for everything earlier messages reported about these patients."""
    if not patients:
        return {}
    query = (
        select(PatientPhi.value, PatientPhi.kind)
        .where(PatientPhi.patient.in_(list(patients)))
        .order_by(PatientPhi.patient, PatientPhi.digest)
        .limit(MAX_KNOWN_VALUES * len(patients))
    )
    return {value: kind for value, kind in session.execute(query).all()}


def add_phi_tokens(session: Session, patient: str, tokens: dict[str, str]) -> None:
    """Remember a patient's keyed identifier tokens (idempotent)."""
    if not tokens:
        return
    rows = [{"patient": patient, "token": t, "kind": k} for t, k in tokens.items()]
    dialect = session.get_bind().dialect.name
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    session.execute(insert(PhiToken).values(rows).on_conflict_do_nothing())
