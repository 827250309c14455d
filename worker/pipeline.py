"""The pipeline as plain functions: load → decode → map → de-identify → store + outbox.

Stage order is the data flow of DESIGN.md. Identified data exists only in memory between
``load`` and ``deidentify``; the only write is one transaction holding de-identified
resources, their events, any summary jobs, the inbox status and the audit entry, so a
crash anywhere leaves the inbox entry RECEIVED and a rerun repeats the work exactly.

A DICOM entry (charset "dicom": a Part-10 file from connectors.dicom) takes its own
transform: the PS3.15 de-identification of the object (``deid.dicom``) and the
ImagingStudy mapping (``mapping.dicom``) of the same instance, keyed by the same
pseudonym; the de-identified .dcm goes to the object store (``worker.objects``) before
the transaction, atomically and idempotently, and the ImagingStudy is merged with the
stored version so it lists every series and instance received so far.

Failures are classified once, here: mapping/de-identification problems (and bugs in
them) are permanent and become dead letters; database errors are transient and
propagate so the runner retries them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from connectors.dicom import CHARSET as DICOM_CHARSET
from connectors.hl7 import AckCode, decode_message
from core.db import Database
from core.errors import SidecarError, UnsupportedMessage
from core.store import (
    StoredChange,
    add_patient_phi,
    add_phi_tokens,
    add_reid_entries,
    known_phi,
    put_resource,
    stored_head,
)
from core.tables import DeadLetter, InboxEntry, InboxStatus
from deid import DeidentifiedResource, DeidResult, DicomOptions, Vault, deidentify, deidentify_dataset
from deid.tokens import identifier_tokens
from mapping import MappingOptions, map_message
from mapping.dicom import map_dataset, merge_studies
from mapping.updates import ADMINISTERED, MERGED_TYPES, merge_update
from worker.appacks import AppAckPolicy, owe
from worker.objects import DeidObject, put_object
from worker.triggers import JobRequest, enqueue_jobs, summary_triggers

log = logging.getLogger("sidecar.worker.pipeline")


class Outcome(StrEnum):
    PROCESSED = "processed"
    SKIPPED = "skipped"  # already processed (a duplicate dispatch): nothing done
    DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True)
class DicomPipelineOptions:
    object_dir: Path | None = None  # de-identified .dcm files go here; None: not kept
    authority: str = ""  # assigning authority of PatientID when IssuerOfPatientID is empty
    allow_burned_in: bool = False  # site rule: release images that may carry burned-in text


@dataclass(frozen=True)
class PipelineContext:
    db: Database
    vault: Vault
    mapping_options: MappingOptions
    coalesce_s: float
    dicom: DicomPipelineOptions = DicomPipelineOptions()
    app_acks: AppAckPolicy | None = None  # application ACKs owed to senders (worker.appacks)


@dataclass(frozen=True)
class ProcessResult:
    inbox_id: int
    outcome: Outcome
    changes: list[StoredChange] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)


class PermanentFailure(Exception):
    """A stage failed in a way retrying the same input cannot fix (names stage and code)."""

    def __init__(self, stage: str, code: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.code, self.reason = stage, code, reason


def process(ctx: PipelineContext, inbox_id: int) -> ProcessResult:
    with ctx.db.sessions() as session:
        entry = session.get(InboxEntry, inbox_id)
        if entry is None or entry.status != InboxStatus.RECEIVED:
            return ProcessResult(inbox_id, Outcome.SKIPPED)
        raw, charset, source = entry.raw, entry.charset, entry.source

    try:
        transformed = transform(ctx, raw, charset)
    except PermanentFailure as failure:
        dead_letter(ctx.db, inbox_id, failure.stage, failure.code, failure.reason, app_acks=ctx.app_acks)
        return ProcessResult(inbox_id, Outcome.DEAD_LETTERED)

    now = datetime.now(UTC)
    with ctx.db.transaction() as session:
        entry = session.execute(
            select(InboxEntry).where(InboxEntry.id == inbox_id).with_for_update()
        ).scalar_one()
        if entry.status != InboxStatus.RECEIVED:  # another worker won the race
            return ProcessResult(inbox_id, Outcome.SKIPPED)
        changes, job_ids = store(session, ctx, inbox_id, transformed, now=now)
        entry.status = InboxStatus.PROCESSED
        entry.processed_at = now
        entry.attempts += 1
        owe(session, ctx.app_acks, inbox_id, raw, source, AckCode.AA, now=now)
        audit.append(
            session,
            actor="worker:pipeline",
            action="message.processed",
            entity=f"inbox/{inbox_id}",
            detail=change_summary(changes, job_ids) | _objects_summary(transformed),
            now=now,
        )
    return ProcessResult(inbox_id, Outcome.PROCESSED, changes, job_ids)


def _objects_summary(transformed: Transformed) -> dict[str, object]:
    # The de-identified files written for this entry, by their (keyed) relative paths.
    if not transformed.objects:
        return {}
    return {"objects": [str(obj.relative_path) for obj in transformed.objects]}


def store(
    session: Session,
    ctx: PipelineContext,
    inbox_id: int,
    transformed: Transformed,
    *,
    now: datetime,
) -> tuple[list[StoredChange], list[int]]:
    """De-identified resources → new versions + outbox events + summary jobs (caller's transaction)."""
    deidentified = transformed.resources
    for obj in transformed.objects:
        if ctx.dicom.object_dir is not None:
            # Before the transaction commits: a crash after this leaves the entry RECEIVED
            # and the rerun finds the same bytes in place.
            put_object(ctx.dicom.object_dir, obj)
    for patient in transformed.patients:
        add_phi_tokens(session, patient, transformed.tokens)
    add_reid_entries(session, transformed.reid, now=now)
    add_patient_phi(session, transformed.patients, transformed.phi_values)
    origin = f"inbox:{inbox_id}"
    changes: list[StoredChange] = []
    stored: list[DeidentifiedResource] = []
    for item in deidentified:
        resource = item.resource
        rtype, rid = resource["resourceType"], resource["id"]
        if f"{rtype}/{rid}" in transformed.create_only and _stored(session, rtype, rid) is not None:
            continue  # a stub never overwrites what a richer source (HL7 ADT) stored
        source_seq: int | None = inbox_id
        if rtype == "ImagingStudy":  # a union of instances: arrival order does not matter
            resource = merge_studies(_stored(session, rtype, rid, lock=True), resource)
            source_seq = None
        elif rtype in MERGED_TYPES:  # an ORU's PID restates the patient in part
            current, newest = stored_head(session, rtype, rid, lock=True)
            if current is not None and newest is not None and inbox_id < newest:
                # A newer entry already stated it (a replay, or this one came late): what it
                # said stands, and this one only adds elements it lacked.
                resource, source_seq = merge_update(resource, current), None
            else:
                keep = frozenset() if transformed.administrative else ADMINISTERED.get(rtype, frozenset())
                clear = transformed.cleared.get(f"{rtype}/{rid}", frozenset())
                resource = merge_update(current, resource, keep=keep, clear=clear)
        # Anything else from an entry older than the newest that stated it is left as stored.
        change = put_resource(
            session, resource, patient=item.patient, origin=origin, now=now, source_seq=source_seq
        )
        changes.append(change)
        stored.append(item)
    requests: list[JobRequest] = summary_triggers(stored, changes)
    job_ids = enqueue_jobs(session, requests, now=now, coalesce_s=ctx.coalesce_s)
    return changes, job_ids


def _stored(session: Session, rtype: str, rid: str, *, lock: bool = False) -> dict[str, Any] | None:
    return stored_head(session, rtype, rid, lock=lock)[0]


def change_summary(changes: list[StoredChange], job_ids: list[int]) -> dict[str, object]:
    summary: dict[str, object] = {
        "resources": len(changes),
        "created": sum(1 for c in changes if c.change == "created"),
        "updated": sum(1 for c in changes if c.change == "updated"),
        "jobs": job_ids,
    }
    stale = [f"{c.resource_type}/{c.resource_id}" for c in changes if c.stale]
    if stale:
        summary["stale"] = stale  # kept as a newer entry stated them (our own ids)
    return summary


@dataclass(frozen=True)
class Transformed:
    resources: list[DeidentifiedResource]
    patients: tuple[str, ...]  # pseudonyms
    tokens: dict[str, str]  # keyed identifier token -> kind, for the outgoing leak guard
    objects: tuple[DeidObject, ...] = ()  # de-identified DICOM files for the object store
    create_only: frozenset[str] = frozenset()  # "Type/id" stored only if absent (stubs)
    # pseudonym -> (authority, identifier) as sent, for the audited way back (sidecar reid)
    reid: dict[str, tuple[str, str]] = field(default_factory=dict)
    # an ADT event: it may change what patient administration owns (an Encounter's status)
    administrative: bool = False
    # what the message reported about its patient(s): remembered for later messages' scrubbing
    phi_values: dict[str, str] = field(default_factory=dict)
    # "Type/id" (de-identified ids) -> elements the message deleted with HL7's explicit null
    cleared: dict[str, frozenset[str]] = field(default_factory=dict)


def transform(ctx: PipelineContext, raw: bytes, charset: str) -> Transformed:
    if charset == DICOM_CHARSET:
        return transform_dicom(ctx, raw)
    stage = "decode"
    try:
        text = decode_message(raw, charset).text
        stage = "map"
        mapped = map_message(text, ctx.mapping_options)
        stage = "deid"
        keys = {pid: (key.authority, key.value) for pid, key in mapped.patient_keys.items()}
        reid = reid_entries(keys, ctx.vault)
    except Exception as exc:
        raise _permanent(stage, exc) from exc
    # Outside the pure stages: a database error here is transient, and the caller retries.
    known = _known(ctx, list(reid))
    try:
        # What earlier messages told us about these patients, then this message's own values.
        result = deidentify(mapped.resources, keys, known | mapped.phi_values, ctx.vault)
    except Exception as exc:
        raise _permanent(stage, exc) from exc
    # De-identification keeps the resources' order, one for one; the ids change.
    cleared = {
        f"{item.resource['resourceType']}/{item.resource['id']}": mapped.cleared[key]
        for source, item in zip(mapped.resources, result.resources, strict=True)
        if (key := f"{source['resourceType']}/{source['id']}") in mapped.cleared
    }
    return Transformed(
        list(result.resources),
        result.patients,
        identifier_tokens(mapped.phi_values, ctx.vault),
        reid=reid,
        phi_values=mapped.phi_values,
        administrative=mapped.message_type.upper().startswith("ADT"),
        cleared=cleared,
    )


def _permanent(stage: str, exc: Exception) -> PermanentFailure:
    if isinstance(exc, SidecarError):  # MappingError, DeidError and the rest
        return PermanentFailure(stage, exc.code, str(exc))
    # A bug in a pure stage fails the same way on every retry: dead-letter it with the
    # exception type only (its text may quote patient data; pydicom's quotes values).
    return PermanentFailure(stage, "internal", f"{type(exc).__name__} in stage {stage}")


def reid_entries(keys: dict[str, tuple[str, str]], vault: Vault) -> dict[str, tuple[str, str]]:
    """pseudonym -> the (authority, identifier) it was made from."""
    return {vault.pseudonym(authority, value): (authority, value) for authority, value in keys.values()}


_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE"})
_LEAK_KINDS = frozenset({"NAME", "ID", "ADDRESS", "PHONE"})
_MIN_LEAK_CHARS = 4  # shorter values (a StudyID "1") match by chance


@dataclass(frozen=True)
class DeidInstance:
    result: DeidResult  # the de-identified ImagingStudy (and Patient stub)
    obj: DeidObject  # the de-identified Part-10 file
    phi_values: dict[str, str]  # identified: never log
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # Patient id -> (authority, value)
    # phi_values without those naming the site or a device: what is the patient's own.
    patient_values: dict[str, str] = field(default_factory=dict)


KnownValues = Callable[[list[str]], dict[str, str]]  # pseudonyms -> value -> kind


def deidentify_instance(
    ds: pydicom.Dataset,
    vault: Vault,
    options: DicomPipelineOptions,
    timezone: str,
    known_of: KnownValues | None = None,
) -> DeidInstance:
    """One DICOM instance -> its de-identified .dcm and ImagingStudy, under one pseudonym.

    ``known_of``: what other messages reported about the patient (``core.store.known_phi``),
    looked up once the pseudonym is known; it cleans descriptions and is checked for in the
    output like the object's own values. Its errors propagate as they are (a database
    error is transient). Raises PermanentFailure (stage, code, a reason naming tags and
    kinds, never values) for everything else.
    """
    stage = "map"
    try:
        mapped = map_dataset(ds, authority=options.authority, default_timezone=timezone)
        if not mapped.patient_keys:
            raise PermanentFailure(
                stage, "no-patient", "DICOM (0010,0020) Patient ID is empty: no patient to link the study to"
            )
        keys = {pid: (key.authority, key.value) for pid, key in mapped.patient_keys.items()}
    except PermanentFailure:
        raise
    except Exception as exc:
        raise _permanent(stage, exc) from exc
    known = known_of(list(reid_entries(keys, vault))) if known_of is not None else {}
    stage = "deid"
    try:
        dicom = deidentify_dataset(
            ds,
            vault,
            DicomOptions(allow_burned_in=options.allow_burned_in),
            authority=options.authority,
            known=known,
        )
        if dicom.quarantined is not None:
            raise PermanentFailure(stage, "burned-in", f"image withheld: {dicom.quarantined}")
        result = deidentify(mapped.resources, keys, known | mapped.phi_values, vault)
        if result.patients != (dicom.patient,):
            # Both sides key the same (issuer, PatientID); if they ever disagree, the
            # study and its images would belong to different pseudonyms.
            raise PermanentFailure(stage, "patient-mismatch", "DICOM and FHIR pseudonyms differ")
        out = dicom.dataset
        own = {v: k for v, k in mapped.phi_values.items() if v not in mapped.site_values}
        _check_dicom_text(out, known | own)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, out, enforce_file_format=True)
        obj = DeidObject(str(out.StudyInstanceUID), str(out.SOPInstanceUID), buffer.getvalue())
    except PermanentFailure:
        raise
    except Exception as exc:
        raise _permanent(stage, exc) from exc
    return DeidInstance(result, obj, mapped.phi_values, keys, own)


def _check_dicom_text(ds: pydicom.Dataset, phi_values: dict[str, str]) -> None:
    """The .dcm's own last gate (deid.deidentify checks the FHIR side): no reported
    identifier may survive in a text attribute. Fails closed, naming tag and kind."""
    needles = [
        (value.casefold(), kind)
        for value, kind in phi_values.items()
        if kind in _LEAK_KINDS and len(value) >= _MIN_LEAK_CHARS
    ]
    for element in ds.iterall():
        if element.VR not in _TEXT_VRS or element.value is None:
            continue
        text = str(element.value).casefold()
        for needle, kind in needles:
            if needle in text:
                raise PermanentFailure("deid", "identifier-leak", f"{kind} survived in DICOM {element.tag}")


def transform_dicom(ctx: PipelineContext, raw: bytes) -> Transformed:
    """A Part-10 file -> de-identified .dcm + de-identified ImagingStudy (and Patient stub)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
    except Exception as exc:
        raise PermanentFailure(
            "decode", "bad-dicom", f"not a readable DICOM file ({type(exc).__name__})"
        ) from exc
    done = deidentify_instance(
        ds, ctx.vault, ctx.dicom, ctx.mapping_options.default_timezone, known_of=lambda p: _known(ctx, p)
    )
    resources = done.result.resources
    stubs = frozenset(
        f"Patient/{r.resource['id']}" for r in resources if r.resource["resourceType"] == "Patient"
    )
    return Transformed(
        list(resources),
        done.result.patients,
        identifier_tokens(done.phi_values, ctx.vault),
        objects=(done.obj,),
        create_only=stubs,
        reid=reid_entries(done.keys, ctx.vault),
        phi_values=done.patient_values,  # remembered for the patient's later messages
    )


def _known(ctx: PipelineContext, patients: list[str]) -> dict[str, str]:
    with ctx.db.sessions() as session:
        return known_phi(session, patients)


def dead_letter(
    db: Database,
    inbox_id: int,
    stage: str,
    code: str,
    reason: str,
    *,
    app_acks: AppAckPolicy | None = None,
) -> None:
    now = datetime.now(UTC)
    with db.transaction() as session:
        entry = session.get(InboxEntry, inbox_id)
        if entry is None or entry.status == InboxStatus.PROCESSED:
            return
        entry.status = InboxStatus.FAILED
        entry.error_code = code
        entry.attempts += 1
        letter = DeadLetter(inbox_id=inbox_id, stage=stage, code=code, reason=reason, created_at=now)
        session.add(letter)
        session.flush()
        # HL7 table 0357: 200 unsupported message type, 207 application internal error.
        rejected = code == UnsupportedMessage.code
        owe(
            session,
            app_acks,
            inbox_id,
            entry.raw,
            entry.source,
            AckCode.AR if rejected else AckCode.AE,
            now=now,
            error=f"{stage}: {reason}",
            error_code="200" if rejected else "207",
        )
        audit.append(
            session,
            actor="worker:pipeline",
            action="message.dead-lettered",
            entity=f"inbox/{inbox_id}",
            outcome=audit.Outcome.FAILURE,
            detail={"stage": stage, "code": code, "dead_letter": letter.id},
            now=now,
        )
    log.warning("dead-lettered", extra={"inbox_id": inbox_id, "stage": stage, "code": code})


def pending_inbox_ids(db: Database, *, limit: int = 10_000, older_than: datetime | None = None) -> list[int]:
    """Inbox entries acknowledged but not yet through the pipeline, oldest first."""
    with db.sessions() as session:
        query = select(InboxEntry.id).where(InboxEntry.status == InboxStatus.RECEIVED)
        if older_than is not None:
            query = query.where(InboxEntry.received_at < older_than)
        return list(session.execute(query.order_by(InboxEntry.id).limit(limit)).scalars())
