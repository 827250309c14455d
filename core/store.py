"""The de-identified resource store: versioned upsert plus outbox, in the caller's transaction.

Shared by the pipeline (worker) and the sandbox, so it lives in core. Callers must hand
in resources that are already de-identified; nothing here can tell.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from core.bulk import fetch_in, insert_rows, update_rows
from core.events import ChangeKind, resource_event, resource_routing_key
from core.search_index import index_values
from core.tables import OutboxEvent, PatientPhi, Resource, ResourceHistory


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
    """Sorted keys, no spaces, UTF-8 kept: what content hashes and stored bodies are made of.

    orjson writes it ~5x faster than the json module (every stored resource is serialised
    on the hot path); the json module takes what orjson refuses (integers past 64 bits).
    Both give the same bytes except for floats below 1e-4, which orjson writes without an
    exponent: a resource stored before with such a value gets one more version on replay."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(resource: dict[str, Any]) -> str:
    # meta is ours (version, timestamp): comparing without it makes a replay of the same
    # message a no-op instead of a new version.
    content = {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def block_reason(event_id: str, kinds: list[str]) -> str:
    """Why an event was not published (``outbox.block_reason``): its id and the kinds of
    identifier found, never a value."""
    return f"event {event_id} carries identifier(s) of kind {', '.join(kinds)}; not published"


def with_meta(content: str, resource: dict[str, Any], meta: dict[str, Any]) -> str:
    """``canonical_json`` of ``resource`` with ``meta`` from ``content`` (its canonical JSON
    without meta): the top level is sorted by key, so meta goes between the keys before and
    after it, and only those after it are serialised again. Byte for byte what
    ``canonical_json({**resource, "meta": meta})`` gives (tests/test_store.py), at about half
    the cost: the pipeline serialises every resource it stores."""
    after = {k: v for k, v in resource.items() if k > "meta"}
    tail = canonical_json(after)[1:-1] if after else ""
    if not content.endswith(tail + "}"):  # serialised by different encoders (see canonical_json)
        return canonical_json({**resource, "meta": meta})
    lead = content[1 : len(content) - 1 - len(tail)]
    if tail and lead.endswith(","):
        lead = lead[:-1]
    entry = '"meta":' + canonical_json(meta)
    return "{" + ",".join(part for part in (lead, entry, tail) if part) + "}"


def event_json(event: dict[str, Any], body: str) -> str:
    """``canonical_json(event)`` where ``body`` is already ``canonical_json(event["data"])``:
    "data" sorts first among a CloudEvent's attributes, so it is spliced in front."""
    rest = canonical_json({k: v for k, v in event.items() if k != "data"})
    if "data" not in event or min(event) != "data":
        return canonical_json(event)
    return '{"data":' + body + ("," + rest[1:] if rest != "{}" else "}")


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
    writer = ResourceWriter(session, now=now)
    writer.load([(resource["resourceType"], resource["id"])], lock=True)
    change = writer.put(resource, patient=patient, origin=origin, source_seq=source_seq)
    writer.flush()
    return change


@dataclass(frozen=True)
class Prepared:
    """What ``ResourceWriter.put`` makes of a resource's content alone, whatever is stored:
    its canonical JSON without meta, the hash of that, its search index values, and the
    leak screen's verdict (None: not screened; the screen skips meta, so it is the
    verdict on the stored version too). The pipeline makes these before it takes the write
    lock (worker.batch), so the lock is held for the comparison and the writes only."""

    resource: dict[str, Any]
    content: str
    digest: str
    index: tuple[str | None, datetime | None, datetime | None]
    kinds: tuple[str, ...] | None = None


def prepare(resource: dict[str, Any], kinds: Sequence[str] | None = None) -> Prepared:
    content = canonical_json({k: v for k, v in resource.items() if k != "meta"})
    digest = hashlib.sha256(content.encode()).hexdigest()
    verdict = None if kinds is None else tuple(kinds)
    return Prepared(resource, content, digest, index_values(resource), verdict)


@dataclass
class _Head:
    """What is stored (or staged in this batch) for one resource."""

    version: int
    content_hash: str
    source_seq: int | None
    patient: str | None
    body: str | None  # canonical JSON; None when it was not loaded (see ResourceWriter.load)
    in_db: bool  # the row exists in the database: update it, do not insert it
    new_version: bool = False  # staged: a new version to write (else at most source_seq changed)
    # (search_tokens, date_low, date_high) of a new version (core.search_index)
    index: tuple[str | None, datetime | None, datetime | None] | None = None


_RESOURCES, _HISTORY, _OUTBOX = (
    cast(Table, Resource.__table__),
    cast(Table, ResourceHistory.__table__),
    cast(Table, OutboxEvent.__table__),
)
_RESOURCE_KEY = ("resource_type", "resource_id")
Screen = Callable[[str | None, dict[str, Any]], list[str]]
_LOAD_CHUNK = 400  # keys per SELECT: x2 parameters, well under SQLite's limit


class ResourceWriter:
    """Versioned upserts of many resources in the caller's transaction: the rules of
    ``put_resource`` applied in memory over heads loaded with one SELECT per few hundred
    keys, then written by ``flush`` with one multi-row statement per table. This is the
    pipeline's hot path: per-row ORM round trips cost ~1.5 ms per message of 11 resources.

    ``mark``/``rollback`` undo what ``put`` staged since a mark, so one message that fails
    half-way through its resources leaves nothing of itself in the batch.
    """

    def __init__(
        self,
        session: Session,
        *,
        now: datetime,
        screen: Screen | None = None,
    ) -> None:
        """``screen``: the outgoing leak check, (patient, resource) -> kinds of the patient's
        identifiers found; with it, every event is written screened, or blocked on a hit
        (``blocked`` lists them for the caller's dead letters)."""
        self._session = session
        self._screen = screen
        self.blocked: list[tuple[str, list[str]]] = []  # (event id, kinds)
        self._now = now
        self._now_iso = now.isoformat()
        self._heads: dict[tuple[str, str], _Head | None] = {}
        self._undo: list[tuple[tuple[str, str], _Head | None]] = []
        self._history: list[dict[str, Any]] = []
        self._outbox: list[dict[str, Any]] = []

    def load(
        self, keys: Iterable[tuple[str, str]], *, lock: bool, bodies: bool | frozenset[str] = True
    ) -> None:
        """Read the stored heads of ``keys`` (locked FOR UPDATE on PostgreSQL when ``lock``).
        ``bodies``: also their JSON, which ``current`` needs (True, or the types to load it for)."""
        wanted = sorted({k for k in keys if k not in self._heads})
        if isinstance(bodies, frozenset):
            self.load([k for k in wanted if k[0] in bodies], lock=lock, bodies=True)
            self.load([k for k in wanted if k[0] not in bodies], lock=lock, bodies=False)
            return
        by_type: dict[str, list[str]] = {}
        for rtype, rid in wanted:
            by_type.setdefault(rtype, []).append(rid)
        body = ", body" if bodies else ""
        for rtype, ids in by_type.items():
            rows = fetch_in(
                self._session,
                f"SELECT resource_id, version, content_hash, source_seq, patient{body} FROM resources "
                f"WHERE resource_type = {{mark}} AND resource_id IN {{values}}",
                ids,
                params=[rtype],
                lock=lock,
            )
            for row in rows:
                self._heads[(rtype, row[0])] = _Head(
                    row[1], row[2], row[3], row[4], row[5] if bodies else None, in_db=True
                )
            for rid in ids:
                self._heads.setdefault((rtype, rid), None)

    def _head(self, rtype: str, rid: str) -> _Head | None:
        key = (rtype, rid)
        if key not in self._heads:
            self.load([key], lock=True)
        head = self._heads[key]
        if head is not None and head.body is None:
            body = self._session.execute(
                select(_RESOURCES.c.body).where(
                    _RESOURCES.c.resource_type == rtype, _RESOURCES.c.resource_id == rid
                )
            ).scalar_one()
            head.body = body
        return head

    def current(self, rtype: str, rid: str) -> tuple[dict[str, Any] | None, int | None]:
        """As ``stored_head``, including what this batch staged."""
        head = self._head(rtype, rid)
        if head is None or head.body is None:
            return None, None
        return json.loads(head.body), head.source_seq

    def mark(self) -> tuple[int, int, int]:
        return len(self._undo), len(self._history), len(self._outbox)

    def rollback(self, mark: tuple[int, int, int]) -> None:
        undo, history, outbox = mark
        while len(self._undo) > undo:
            key, previous = self._undo.pop()
            self._heads[key] = previous
        del self._history[history:]
        del self._outbox[outbox:]
        staged = {row["event_id"] for row in self._outbox}
        self.blocked = [b for b in self.blocked if b[0] in staged]

    def _set(self, key: tuple[str, str], head: _Head) -> None:
        self._undo.append((key, self._heads.get(key)))
        self._heads[key] = head

    def put(
        self,
        resource: dict[str, Any],
        *,
        patient: str | None,
        origin: str,
        source_seq: int | None = None,
        prepared: Prepared | None = None,
    ) -> StoredChange:
        """``put_resource``'s rules, staged for ``flush``. ``prepared``: ``prepare`` of this
        very resource, made earlier (anything else is worked out here)."""
        rtype, rid = resource["resourceType"], resource["id"]
        key = (rtype, rid)
        if key not in self._heads:
            self.load([key], lock=True)
        head = self._heads[key]
        if prepared is None or prepared.resource is not resource:
            prepared = prepare(resource)
        content, digest = prepared.content, prepared.digest
        stated = head.source_seq if head is not None else None
        if head is not None and stated is not None and source_seq is not None and source_seq < stated:
            return StoredChange(rtype, rid, head.version, None, stale=True)
        newest = _newest(stated, source_seq)
        if head is not None and head.content_hash == digest:
            if newest != head.source_seq:
                self._set(key, replace(head, source_seq=newest))
            return StoredChange(rtype, rid, head.version, None)

        version = 1 if head is None else head.version + 1
        change = ChangeKind.CREATED if head is None else ChangeKind.UPDATED
        meta = dict(resource.get("meta") or {})
        meta.update(versionId=str(version), lastUpdated=self._now_iso)
        stored = {**resource, "meta": meta}
        body = with_meta(content, resource, meta)
        self._set(
            key,
            _Head(
                version,
                digest,
                newest,
                patient,
                body,
                in_db=head is not None and head.in_db,
                new_version=True,
                index=prepared.index,
            ),
        )
        self._history.append(
            {
                "resource_type": rtype,
                "resource_id": rid,
                "version": version,
                "body": body,
                "origin": origin,
                "recorded_at": self._now,
            }
        )
        event = resource_event(stored, change, patient=patient, time=self._now_iso)
        kinds: list[str] = []
        if self._screen is not None and patient:
            kinds = list(prepared.kinds) if prepared.kinds is not None else self._screen(patient, stored)
        reason = block_reason(event["id"], kinds) if kinds else None
        if kinds:
            self.blocked.append((event["id"], kinds))
        self._outbox.append(
            {
                "event_id": event["id"],
                "routing_key": resource_routing_key(rtype, change),
                "body": event_json(event, body),
                "created_at": self._now,
                "attempts": 0,
                "screened": self._screen is not None,
                "blocked_at": self._now if kinds else None,
                "block_reason": reason,
            }
        )
        return StoredChange(rtype, rid, version, change)

    def flush(self) -> None:
        """Write what was staged: new heads, changed heads, history, then the outbox (in
        staging order, so event ids follow commit order per patient)."""
        touched = {key for key, _ in self._undo}
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        restated: list[dict[str, Any]] = []  # same content, newer source_seq
        for key in sorted(touched):
            head = self._heads[key]
            if head is None:
                continue
            if head.body is None or not head.new_version:
                restated.append(
                    {"source_seq": head.source_seq, "resource_type": key[0], "resource_id": key[1]}
                )
                continue
            tokens, low, high = head.index or (None, None, None)
            row = {
                "version": head.version,
                "patient": head.patient,
                "body": head.body,
                "content_hash": head.content_hash,
                "updated_at": self._now,
                "source_seq": head.source_seq,
                "search_tokens": tokens,
                "date_low": low,
                "date_high": high,
                "resource_type": key[0],
                "resource_id": key[1],
            }
            (updates if head.in_db else inserts).append(row)
        insert_rows(self._session, _RESOURCES, inserts)
        update_rows(self._session, _RESOURCES, _RESOURCE_KEY, updates)
        update_rows(self._session, _RESOURCES, _RESOURCE_KEY, restated)
        insert_rows(self._session, _HISTORY, self._history)
        insert_rows(self._session, _OUTBOX, self._outbox)
        for key in touched:
            head = self._heads[key]
            if head is not None:
                head.in_db, head.new_version = True, False
        self._undo.clear()
        self._history, self._outbox = [], []


def _newest(stored: int | None, incoming: int | None) -> int | None:
    return incoming if stored is None else stored if incoming is None else max(stored, incoming)


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


# Dates are left out: the scrubber shifts every date it recognises anyway, and a patient's
# visit dates would grow this without end.
REMEMBERED_KINDS = frozenset({"NAME", "ID", "ADDRESS", "PHONE", "EMAIL"})
MAX_KNOWN_VALUES = 2000  # per patient: a bound on what one message's scrubber is built from


def phi_digest(kind: str, value: str) -> str:
    """The key of a remembered value (``patient_phi.digest``)."""
    return hashlib.sha256(f"{kind}\x00{value}".encode()).hexdigest()


KnownRows = dict[str, dict[str, tuple[str, str]]]  # patient -> digest -> (kind, value)


def known_phi_rows(session: Session, patients: Iterable[str]) -> KnownRows:
    """What earlier messages reported about these patients (every patient a key)."""
    wanted = sorted(set(patients))
    rows: KnownRows = {p: {} for p in wanted}
    for start in range(0, len(wanted), _LOAD_CHUNK):
        query = select(PatientPhi.patient, PatientPhi.digest, PatientPhi.kind, PatientPhi.value).where(
            PatientPhi.patient.in_(wanted[start : start + _LOAD_CHUNK])
        )
        for patient, digest, kind, value in session.execute(query):
            rows[patient][digest] = (kind, value)
    return rows


def compose_known(rows: KnownRows, patients: Sequence[str]) -> dict[str, str]:
    """value -> kind for these patients, in patient and digest order and at most
    MAX_KNOWN_VALUES per patient asked for: what one message's scrubber is built from."""
    budget = MAX_KNOWN_VALUES * len(patients)
    out: dict[str, str] = {}
    for patient in sorted(set(patients)):
        for digest in sorted(rows[patient]):
            if budget <= 0:
                return out
            kind, value = rows[patient][digest]
            out[value] = kind
            budget -= 1
    return out


def known_phi(session: Session, patients: Sequence[str]) -> dict[str, str]:
    """value -> kind, for everything earlier messages reported about these patients."""
    return compose_known(known_phi_rows(session, patients), patients)
