"""The pipeline over a batch of inbox entries: the hot path of both runners.

Per batch: one read of the entries, the pure stages per entry (decode, map, de-identify;
identified data in memory only), one read of what earlier messages reported about the
batch's patients, then ONE transaction that stores every entry's resources (multi-row
statements, ``core.store.ResourceWriter``), their events, summary jobs, tokens, known
values, re-identification entries, application ACKs, the inbox statuses and one audit
entry for the batch. A crash anywhere leaves every entry of the batch RECEIVED and a rerun
repeats the work exactly, as for one entry (ids are deterministic, unchanged content is a
no-op).

Entries are handled in inbox id order, so a patient's messages are stored (and their events
published) in arrival order. A bad entry does not fail its batch-mates: a failure of the
pure stages, or of its own share of the store, becomes its dead letter in the same
transaction; when the database refuses the batch as a whole, ``process_entries`` retries
each entry alone, so the one it refuses is isolated and dead-lettered too.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

import audit
from connectors.dicom import CHARSET as DICOM_CHARSET
from connectors.hl7 import AckCode
from core.bulk import insert_rows
from core.store import (
    REMEMBERED_KINDS,
    Prepared,
    ResourceWriter,
    Screen,
    StoredChange,
    compose_known,
    known_phi_rows,
    phi_digest,
    prepare,
)
from core.tables import InboxEntry, InboxStatus, OutboxEvent, PatientPhi, PhiToken, ReidEntry
from deid import DeidentifiedResource
from mapping.dicom import merge_studies
from mapping.updates import ADMINISTERED, MERGED_TYPES, merge_update
from worker.appacks import owe
from worker.leakguard import LeakGuard, record_block
from worker.objects import put_object
from worker.pipeline import (
    Mapped,
    Outcome,
    PermanentFailure,
    PipelineContext,
    ProcessResult,
    Transformed,
    change_summary,
    dead_letter,
    dead_letter_in,
    deidentify_mapped,
    map_entry,
    transform_dicom,
)
from worker.triggers import JobRequest, enqueue_jobs, summary_triggers

log = logging.getLogger("sidecar.worker.batch")

_INBOX = cast(Table, InboxEntry.__table__)
_TOKENS, _PHI, _REID = (cast(Table, t.__table__) for t in (PhiToken, PatientPhi, ReidEntry))
_MARK_PROCESSED = (
    _INBOX.update()
    .where(_INBOX.c.id == bindparam("k_id"))
    .values(status=InboxStatus.PROCESSED, processed_at=bindparam("at"), attempts=_INBOX.c.attempts + 1)
)
_KEYS_PER_QUERY = 500
_STUB_TYPES = frozenset({"Patient"})  # create_only stubs (DICOM's Patient) are checked against what is stored


TOKENS_MAX_AGE_S = 30.0  # how long the pipeline trusts a patient's tokens it read (see _prepare)
AUDIT_STAGE = "store.audit"  # a part of the "store" stage, counted apart too


class PipelineState:
    """What one pipeline process carries from batch to batch: CPU seconds spent per stage
    (thread time), summed over batches (``sidecar stats``: ``pipeline.cpu_ms.<stage>``),
    and the identifier rows it knows are stored (``seen``), so a patient's next message
    does not insert them again (rows are only ever inserted, so "stored" stays true), and
    the leak guard with its caches: token hashes per text, and the tokens of the patients
    it saw lately (see ``_prepare``)."""

    def __init__(self, seen_max: int = 200_000) -> None:
        self.seconds: dict[str, float] = {}
        self.entries = 0
        self._seen: OrderedDict[tuple[str, ...], None] = OrderedDict()
        self._seen_max = seen_max
        self.guard: LeakGuard | None = None  # the outgoing leak check, its text cache kept

    def unseen(self, key: tuple[str, ...]) -> bool:
        return key not in self._seen

    def saw(self, keys: Iterable[tuple[str, ...]]) -> None:
        """Call after the transaction that stored them committed."""
        for key in keys:
            self._seen[key] = None
            self._seen.move_to_end(key)
        while len(self._seen) > self._seen_max:
            self._seen.popitem(last=False)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.thread_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.thread_time() - start

    def take(self) -> tuple[dict[str, float], int]:
        """What accumulated since the last take (and reset)."""
        seconds, entries = self.seconds, self.entries
        self.seconds, self.entries = {}, 0
        return seconds, entries


@dataclass
class BatchResult:
    results: list[ProcessResult] = field(default_factory=list)

    @property
    def job_ids(self) -> list[int]:
        return sorted({job for r in self.results for job in r.job_ids})

    @property
    def changed(self) -> bool:
        return any(c.change is not None for r in self.results for c in r.changes)


@dataclass
class _Entry:
    inbox_id: int
    raw: bytes
    source: str
    charset: str
    outcome: Transformed | PermanentFailure | None = None
    prepared: list[Prepared | None] = field(default_factory=list)  # one per resource


class _Known:
    """What earlier messages reported about the batch's patients (``patient_phi``), read once
    per batch, plus what the batch's own earlier entries reported: entry k is scrubbed with
    exactly what it would have seen had entries 1..k-1 been processed and committed alone."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._sessions = session_factory
        self._rows: dict[str, dict[str, tuple[str, str]]] = {}  # patient -> digest -> (kind, value)
        self._stored: dict[str, set[str]] = {}  # patient -> digests read from the database

    def load(self, patients: Sequence[str]) -> None:
        missing = [p for p in patients if p not in self._rows]
        if not missing:
            return
        with self._sessions() as session:
            rows = known_phi_rows(session, missing)
        self._rows.update(rows)
        for patient, found in rows.items():
            self._stored[patient] = set(found)

    def values(self, patients: Sequence[str]) -> dict[str, str]:
        """As ``core.store.known_phi``, with what the batch's earlier entries reported."""
        self.load(patients)
        return compose_known(self._rows, patients)

    def unseen(self, key: tuple[str, ...]) -> bool:
        """False for a ``patient_phi`` row read from the database (so stored already)."""
        if key[0] != "phi":
            return True
        return key[2] not in self._stored.get(key[1], ())

    def remember(self, patients: Sequence[str], phi_values: dict[str, str]) -> None:
        self.load(patients)
        for patient in patients:
            rows = self._rows[patient]
            for value, kind in phi_values.items():
                if kind in REMEMBERED_KINDS and value.strip():
                    rows.setdefault(phi_digest(kind, value), (kind, value))


def process(ctx: PipelineContext, inbox_id: int) -> ProcessResult:
    """One inbox entry through the pipeline (a batch of one)."""
    return process_entries(ctx, [inbox_id]).results[0]


def store(
    session: Session, ctx: PipelineContext, inbox_id: int, transformed: Transformed, *, now: datetime
) -> tuple[list[StoredChange], list[int]]:
    """One transformed entry's resources, events, jobs and identifiers, in the caller's
    transaction (``sidecar replay``); the batch does the same for many at once."""
    for obj in transformed.objects:
        if ctx.dicom.object_dir is not None:
            put_object(ctx.dicom.object_dir, obj)
    writer = ResourceWriter(session, now=now)
    changes, kept = _stage_resources(writer, inbox_id, transformed)
    writer.flush()
    _remember_identifiers(session, [transformed], now=now)
    requests = summary_triggers(kept, changes, now=now, digest_hour=ctx.digest_hour)
    return changes, enqueue_jobs(session, requests, now=now, coalesce_s=ctx.coalesce_s)


def process_entries(
    ctx: PipelineContext, inbox_ids: Sequence[int], *, state: PipelineState | None = None
) -> BatchResult:
    """Process these inbox entries (those still RECEIVED), in id order. Database errors
    are transient and propagate; when the batch's transaction fails for another reason
    than a lost connection, each entry is tried alone, so one entry the database refuses
    is dead-lettered and the others are stored."""
    state = state or PipelineState()
    try:
        return process_batch(ctx, inbox_ids, state=state)
    except (OperationalError, InterfaceError):
        raise  # the database is away or busy: the whole batch is retried later
    except DBAPIError:
        if len(inbox_ids) == 1:
            return _refused_alone(ctx, inbox_ids[0])
        log.warning("batch refused by the database; retrying its entries one by one")
    out = BatchResult()
    for inbox_id in sorted(inbox_ids):
        try:
            out.results += process_batch(ctx, [inbox_id], state=state).results
        except (OperationalError, InterfaceError):
            raise
        except DBAPIError:
            out.results += _refused_alone(ctx, inbox_id).results
    return out


def _refused_alone(ctx: PipelineContext, inbox_id: int) -> BatchResult:
    # The database refuses what this entry's resources would write (a value too long for
    # a column, a constraint): retrying cannot help, so it is a dead letter like the others.
    dead_letter(
        ctx.db,
        inbox_id,
        "store",
        "rejected-by-database",
        "the database refused to store this message's resources",
        app_acks=ctx.app_acks,
    )
    return BatchResult([ProcessResult(inbox_id, Outcome.DEAD_LETTERED)])


def process_batch(ctx: PipelineContext, inbox_ids: Sequence[int], *, state: PipelineState) -> BatchResult:
    with state.stage("load"):
        entries = _load(ctx, inbox_ids)
    if not entries:
        return BatchResult([ProcessResult(i, Outcome.SKIPPED) for i in inbox_ids])
    known = _Known(ctx.db.reads)
    mapped: dict[int, Mapped] = {}
    with state.stage("map"):
        for entry in entries:
            if entry.charset == DICOM_CHARSET:
                continue
            try:
                mapped[entry.inbox_id] = map_entry(ctx, entry.raw, entry.charset)
            except PermanentFailure as failure:
                entry.outcome = failure
    with state.stage("known"):
        known.load([p for m in mapped.values() for p in m.reid])
    with state.stage("deid"):
        for entry in entries:
            if entry.outcome is not None:
                continue
            try:
                if entry.charset == DICOM_CHARSET:
                    entry.outcome = transform_dicom(ctx, entry.raw, known.values)
                else:
                    m = mapped[entry.inbox_id]
                    entry.outcome = deidentify_mapped(ctx, m, known.values(list(m.reid)))
            except PermanentFailure as failure:
                entry.outcome = failure
                continue
            known.remember(entry.outcome.patients, entry.outcome.phi_values)
    state.entries += len(entries)
    now = datetime.now(UTC)
    with state.stage("objects"):
        for entry in entries:
            if isinstance(entry.outcome, Transformed) and ctx.dicom.object_dir is not None:
                for obj in entry.outcome.objects:
                    # Before the transaction commits: a crash after this leaves the entry
                    # RECEIVED and the rerun finds the same bytes in place.
                    put_object(ctx.dicom.object_dir, obj)
    with state.stage("prepare"):
        _prepare(ctx, entries, state)
    stored_keys: list[tuple[str, ...]] = []
    with state.stage("store"):
        with ctx.db.transaction() as session:
            result = _store_batch(
                session,
                ctx,
                entries,
                now=now,
                skipped=set(inbox_ids) - {e.inbox_id for e in entries},
                known=known,
                state=state,
                stored_keys=stored_keys,
            )
        state.saw(stored_keys)
    return result


def _load(ctx: PipelineContext, inbox_ids: Sequence[int]) -> list[_Entry]:
    entries: list[_Entry] = []
    ids = sorted(set(inbox_ids))
    with ctx.db.reads() as session:
        for start in range(0, len(ids), _KEYS_PER_QUERY):
            rows = session.execute(
                select(InboxEntry.id, InboxEntry.raw, InboxEntry.source, InboxEntry.charset).where(
                    InboxEntry.id.in_(ids[start : start + _KEYS_PER_QUERY]),
                    InboxEntry.status == InboxStatus.RECEIVED,
                )
            )
            entries += [_Entry(r.id, r.raw, r.source, r.charset) for r in rows]
    entries.sort(key=lambda e: e.inbox_id)
    return entries


def _still_received(session: Session, ctx: PipelineContext, ids: list[int]) -> set[int]:
    """Entries no other worker finished meanwhile (locked on PostgreSQL; SQLite's
    transaction already holds the write lock)."""
    out: set[int] = set()
    for start in range(0, len(ids), _KEYS_PER_QUERY):
        query = select(InboxEntry.id).where(
            InboxEntry.id.in_(ids[start : start + _KEYS_PER_QUERY]), InboxEntry.status == InboxStatus.RECEIVED
        )
        if not ctx.db.is_sqlite:
            query = query.with_for_update()
        out.update(session.execute(query).scalars())
    return out


def _store_batch(
    session: Session,
    ctx: PipelineContext,
    entries: list[_Entry],
    *,
    now: datetime,
    skipped: set[int],
    known: _Known,
    state: PipelineState,
    stored_keys: list[tuple[str, ...]],
) -> BatchResult:
    received = _still_received(session, ctx, [e.inbox_id for e in entries])
    writer = ResourceWriter(session, now=now, screen=_screen(session, state))
    writer.load(
        (
            (item.resource["resourceType"], item.resource["id"])
            for e in entries
            if isinstance(e.outcome, Transformed)
            for item in e.outcome.resources
        ),
        lock=not ctx.db.is_sqlite,
        bodies=MERGED_TYPES | {"ImagingStudy"} | _STUB_TYPES,
    )
    results: dict[int, ProcessResult] = {i: ProcessResult(i, Outcome.SKIPPED) for i in skipped}
    stored: list[tuple[_Entry, Transformed, list[StoredChange], list[JobRequest]]] = []
    failed: list[tuple[_Entry, PermanentFailure]] = []
    for entry in entries:
        if entry.inbox_id not in received:  # another worker won the race
            results[entry.inbox_id] = ProcessResult(entry.inbox_id, Outcome.SKIPPED)
            continue
        outcome = entry.outcome
        if isinstance(outcome, Transformed):
            mark = writer.mark()
            try:
                changes, kept = _stage_resources(writer, entry.inbox_id, outcome, entry.prepared)
                stored.append(
                    (
                        entry,
                        outcome,
                        changes,
                        summary_triggers(kept, changes, now=now, digest_hour=ctx.digest_hour),
                    )
                )
                continue
            except DBAPIError:
                raise
            except Exception as exc:
                writer.rollback(mark)
                # Like the pure stages: a bug is permanent, reported by exception type only.
                outcome = PermanentFailure("store", "internal", f"{type(exc).__name__} in stage store")
        assert isinstance(outcome, PermanentFailure)
        failed.append((entry, outcome))
    writer.flush()
    _blocked(session, writer.blocked, now=now)
    stored_keys += _remember_identifiers(
        session,
        [t for _, t, _, _ in stored],
        now=now,
        new=lambda key: state.unseen(key) and known.unseen(key),
    )
    job_ids = enqueue_jobs(
        session, [r for _, _, _, requests in stored for r in requests], now=now, coalesce_s=ctx.coalesce_s
    )
    jobs_of = iter(job_ids)
    if stored:
        session.connection().execute(
            _MARK_PROCESSED, [{"k_id": e.inbox_id, "at": now} for e, _, _, _ in stored]
        )
    processed_detail: dict[str, object] = {}
    for entry, transformed, changes, requests in stored:
        mine = [next(jobs_of) for _ in requests]
        owe(session, ctx.app_acks, entry.inbox_id, entry.raw, entry.source, AckCode.AA, now=now)
        results[entry.inbox_id] = ProcessResult(entry.inbox_id, Outcome.PROCESSED, changes, mine)
        summary = change_summary(changes, mine)
        if transformed.objects:
            summary["objects"] = [str(obj.relative_path) for obj in transformed.objects]
        processed_detail[str(entry.inbox_id)] = summary
    if stored:
        ids = [e.inbox_id for e, _, _, _ in stored]
        with state.stage(AUDIT_STAGE):  # inside "store": bench/e2e.py reports its share of the batch
            audit.append(
                session,
                actor="worker:pipeline",
                action="messages.processed",
                entity=f"inbox/{min(ids)}-{max(ids)}",
                detail={"entries": processed_detail},
                now=now,
                patients=[p for _, t, _, _ in stored for p in t.patients],
            )
    for entry, failure in failed:
        _dead_letter_in(session, ctx, entry, failure, now=now)
        results[entry.inbox_id] = ProcessResult(entry.inbox_id, Outcome.DEAD_LETTERED)
    return BatchResult([results[i] for i in sorted(results)])


def _prepare(ctx: PipelineContext, entries: list[_Entry], state: PipelineState) -> None:
    """Before the write transaction, what storing a resource needs of its content alone
    (``core.store.prepare``: JSON, hash, search index, the leak screen's verdict), so the
    write lock, which the listener's inbox and the relay wait for, is held for the rest only.
    Not for the types the store merges with what is stored (their content is known only
    inside the transaction).

    The screen is the relay's leak check, run here on the events the batch writes: the
    patients' stored tokens (one read) plus what the batch's entries report. In the
    pipeline's processes, which scale, rather than in the relay's one; the relay still
    checks any row not screened. Read before the transaction like the known values
    (``_Known``): a patient's entries are handled by one process (worker.runner's lanes), so
    no other transaction adds to its tokens meanwhile."""
    if state.guard is None:
        state.guard = LeakGuard(ctx.vault)
    guard = state.guard
    done = [(e, e.outcome) for e in entries if isinstance(e.outcome, Transformed)]
    with ctx.db.reads() as session:
        # A patient's tokens grow with each of its messages (order and visit numbers), so
        # reading them all again for every batch cost more the longer the patient stayed.
        # This process stores them itself, and learns each batch's below, so what it read
        # stays complete; read again after TOKENS_MAX_AGE_S all the same (a replay, or a
        # message of the patient another lane took, may have added some).
        guard.prefetch(session, {p for _, t in done for p in t.patients}, max_age_s=TOKENS_MAX_AGE_S)
        for _, t in done:
            for patient in t.patients:
                guard.learn(patient, t.tokens)
        for entry, t in done:
            entry.prepared = [
                None
                if _merged(item.resource["resourceType"])
                else prepare(
                    item.resource,
                    guard.kinds_in(session, item.patient, item.resource) if item.patient else (),
                )
                for item in t.resources
            ]


def _merged(rtype: str) -> bool:
    """Stored as a merge with the stored version (``_stage_resources``)."""
    return rtype in MERGED_TYPES or rtype == "ImagingStudy"


def _screen(session: Session, state: PipelineState) -> Screen:
    """The leak screen of what ``_prepare`` could not screen, over the tokens it read."""
    guard = state.guard
    assert guard is not None, "_prepare runs first"
    return lambda patient, resource: guard.kinds_in(session, patient, resource) if patient else []


def _blocked(session: Session, blocked: list[tuple[str, list[str]]], *, now: datetime) -> None:
    """Dead letters and audit entries for events the check stopped, as the relay writes them."""
    for event_id, kinds in blocked:
        row_id = session.execute(select(OutboxEvent.id).where(OutboxEvent.event_id == event_id)).scalar_one()
        record_block(
            session, actor="worker:pipeline", outbox_id=row_id, event_id=event_id, kinds=kinds, now=now
        )


def _stage_resources(
    writer: ResourceWriter,
    inbox_id: int,
    transformed: Transformed,
    prepared: Sequence[Prepared | None] = (),
) -> tuple[list[StoredChange], list[DeidentifiedResource]]:
    """One entry's resources, by the rules of its kind (see docs/architecture.md, data flow 2).
    ``prepared``: ``_prepare``'s work, one per resource (or none)."""
    origin = f"inbox:{inbox_id}"
    changes: list[StoredChange] = []
    kept: list[DeidentifiedResource] = []
    ready = list(prepared) or [None] * len(transformed.resources)
    for item, made in zip(transformed.resources, ready, strict=True):
        resource: dict[str, Any] = item.resource
        rtype, rid = resource["resourceType"], resource["id"]
        if f"{rtype}/{rid}" in transformed.create_only and writer.current(rtype, rid)[0] is not None:
            continue  # a stub never overwrites what a richer source (HL7 ADT) stored
        source_seq: int | None = inbox_id
        if rtype == "ImagingStudy":  # a union of instances: arrival order does not matter
            resource = merge_studies(writer.current(rtype, rid)[0], resource)
            source_seq = None
        elif rtype in MERGED_TYPES:  # an ORU's PID restates the patient in part
            current, newest = writer.current(rtype, rid)
            if current is not None and newest is not None and inbox_id < newest:
                # A newer entry already stated it (a replay, or this one came late): what it
                # said stands, and this one only adds elements it lacked.
                resource, source_seq = merge_update(resource, current), None
            else:
                keep = frozenset() if transformed.administrative else ADMINISTERED.get(rtype, frozenset())
                clear = transformed.cleared.get(f"{rtype}/{rid}", frozenset())
                resource = merge_update(current, resource, keep=keep, clear=clear)
        # Anything else from an entry older than the newest that stated it is left as stored.
        changes.append(
            writer.put(resource, patient=item.patient, origin=origin, source_seq=source_seq, prepared=made)
        )
        kept.append(item)
    return changes, kept


def _remember_identifiers(
    session: Session,
    done: list[Transformed],
    *,
    now: datetime,
    new: Callable[[tuple[str, ...]], bool] = lambda _key: True,
) -> list[tuple[str, ...]]:
    """Tokens for the leak guard, known values for later messages' scrubbing, and the
    re-identification map: insert-or-ignore, one statement per table for the batch, leaving
    out rows ``new`` says are stored already. Returns the keys of the rows written."""
    tokens: dict[tuple[str, ...], dict[str, str]] = {}
    phi: dict[tuple[str, ...], dict[str, str]] = {}
    reid: dict[tuple[str, ...], dict[str, Any]] = {}
    for t in done:
        for patient in t.patients:
            for token, kind in t.tokens.items():
                if (key := ("token", patient, token)) not in tokens and new(key):
                    tokens[key] = {"patient": patient, "token": token, "kind": kind}
            for value, kind in t.phi_values.items():
                if kind in REMEMBERED_KINDS and value.strip():
                    digest = phi_digest(kind, value)
                    if (key := ("phi", patient, digest)) not in phi and new(key):
                        phi[key] = {"patient": patient, "digest": digest, "kind": kind, "value": value}
        for pseudonym, (authority, identifier) in t.reid.items():
            reid_key: tuple[str, ...] = ("reid", pseudonym)
            if reid_key not in reid and new(reid_key):
                reid[reid_key] = {
                    "pseudonym": pseudonym,
                    "authority": authority,
                    "identifier": identifier,
                    "first_seen_at": now,
                }
    insert_rows(session, _TOKENS, list(tokens.values()), ignore=("patient", "token"))
    insert_rows(session, _PHI, list(phi.values()), ignore=("patient", "digest"))
    insert_rows(session, _REID, list(reid.values()), ignore=("pseudonym",))
    return [*tokens, *phi, *reid]


def _dead_letter_in(
    session: Session, ctx: PipelineContext, entry: _Entry, failure: PermanentFailure, *, now: datetime
) -> None:
    row = session.get_one(InboxEntry, entry.inbox_id)
    dead_letter_in(session, row, failure.stage, failure.code, failure.reason, app_acks=ctx.app_acks, now=now)
