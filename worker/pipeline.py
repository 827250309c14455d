"""The pipeline's stages as plain functions: decode → map → de-identify, and dead letters.

Stage order is the data flow of docs/architecture.md. Identified data exists only in
memory here; ``worker.batch`` runs these stages over a batch of inbox entries and stores
the results in one transaction.

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

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from connectors.dicom import CHARSET as DICOM_CHARSET
from connectors.hl7 import AckCode, decode_message
from core.db import Database
from core.errors import SidecarError, UnsupportedMessage
from core.store import StoredChange, known_phi
from core.tables import DeadLetter, InboxEntry, InboxStatus
from deid import DeidentifiedResource, DeidResult, DicomOptions, Vault, deidentify, deidentify_dataset
from deid.budget import Budget
from deid.tokens import identifier_tokens
from mapping import MappedMessage, MappingOptions, map_message
from mapping.dicom import map_dataset
from worker.appacks import AppAckPolicy, owe
from worker.objects import DeidObject
from worker.options import DicomPipelineOptions

log = logging.getLogger("sidecar.worker.pipeline")


class Outcome(StrEnum):
    PROCESSED = "processed"
    SKIPPED = "skipped"  # already processed (a duplicate dispatch): nothing done
    DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True)
class PipelineContext:
    db: Database
    vault: Vault
    mapping_options: MappingOptions
    coalesce_s: float
    dicom: DicomPipelineOptions = field(default_factory=DicomPipelineOptions)
    digest_hour: int | None = None  # daily digest summaries due at this UTC hour; None: none
    app_acks: AppAckPolicy | None = None  # application ACKs owed to senders (worker.appacks)
    # Validate every de-identified resource against the FHIR models before storing it.
    # Off by default: ~0.15 ms per resource, and property tests prove the mapping's output
    # valid (docs/architecture.md, "Validation").
    validate: bool = False
    # The cost bound of de-identifying one message (deid.budget; settings deid_max_text_chars
    # and deid_budget_ms, 0: none): over it, the message is dead-lettered, not scrubbed on.
    deid_max_text_chars: int = 262_144
    deid_budget_ms: int = 10_000

    def deid_budget(self) -> Budget:
        """A fresh budget for one message."""
        return Budget(max_text_chars=self.deid_max_text_chars or None, max_cpu_ms=self.deid_budget_ms or None)


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


@dataclass(frozen=True)
class Mapped:
    """An HL7 message decoded and mapped, not yet de-identified: identified, in memory only."""

    message: MappedMessage
    keys: dict[str, tuple[str, str]]  # source Patient id -> (authority, identifier)
    reid: dict[str, tuple[str, str]]  # pseudonym -> (authority, identifier)


def transform(
    ctx: PipelineContext, raw: bytes, charset: str, known_of: KnownValues | None = None
) -> Transformed:
    """Decode, map and de-identify one inbox entry. ``known_of``: what earlier messages
    reported about the patients (default: read from the database now)."""
    known_of = known_of or (lambda patients: _known(ctx, patients))
    if charset == DICOM_CHARSET:
        return transform_dicom(ctx, raw, known_of)
    mapped = map_entry(ctx, raw, charset)
    return deidentify_mapped(ctx, mapped, known_of(list(mapped.reid)))


def map_entry(ctx: PipelineContext, raw: bytes, charset: str) -> Mapped:
    """The pure first half of an HL7 entry's transform: decode and map."""
    stage = "decode"
    try:
        text = decode_message(raw, charset).text
        stage = "map"
        mapped = map_message(text, ctx.mapping_options)
        stage = "deid"
        keys = {pid: (key.authority, key.value) for pid, key in mapped.patient_keys.items()}
        return Mapped(mapped, keys, reid_entries(keys, ctx.vault))
    except Exception as exc:
        raise _permanent(stage, exc) from exc


def deidentify_mapped(ctx: PipelineContext, entry: Mapped, known: dict[str, str]) -> Transformed:
    """The second half: de-identify with what earlier messages told us about these patients
    (``known``) and this message's own values."""
    mapped = entry.message
    try:
        result = deidentify(
            mapped.resources,
            entry.keys,
            known | mapped.phi_values,
            ctx.vault,
            validate=ctx.validate,
            budget=ctx.deid_budget(),
        )
    except Exception as exc:
        raise _permanent("deid", exc) from exc
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
        reid=entry.reid,
        # An order's numbers are scrubbed here and kept as tokens for the leak guard, but
        # not remembered: every later message of the patient would be scrubbed with them.
        phi_values={v: k for v, k in mapped.phi_values.items() if v not in mapped.order_values},
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
    budget: Budget | None = None,
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
        result = deidentify(mapped.resources, keys, known | mapped.phi_values, vault, budget=budget)
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


def transform_dicom(ctx: PipelineContext, raw: bytes, known_of: KnownValues | None = None) -> Transformed:
    """A Part-10 file -> de-identified .dcm + de-identified ImagingStudy (and Patient stub)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
    except Exception as exc:
        raise PermanentFailure(
            "decode", "bad-dicom", f"not a readable DICOM file ({type(exc).__name__})"
        ) from exc
    done = deidentify_instance(
        ds,
        ctx.vault,
        ctx.dicom,
        ctx.mapping_options.default_timezone,
        known_of=known_of or (lambda p: _known(ctx, p)),
        budget=ctx.deid_budget(),
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
    with ctx.db.reads() as session:
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
    """Dead-letter one entry in a transaction of its own (unless it was processed meanwhile)."""
    with db.transaction() as session:
        entry = session.get(InboxEntry, inbox_id)
        if entry is None or entry.status == InboxStatus.PROCESSED:
            return
        dead_letter_in(session, entry, stage, code, reason, app_acks=app_acks, now=datetime.now(UTC))


def dead_letter_in(
    session: Session,
    entry: InboxEntry,
    stage: str,
    code: str,
    reason: str,
    *,
    app_acks: AppAckPolicy | None,
    now: datetime,
) -> None:
    """In the caller's transaction: the entry FAILED, its dead letter with the reason, the
    application ACK it is owed, and its audit entry."""
    entry.status = InboxStatus.FAILED
    entry.error_code = code
    entry.attempts += 1
    letter = DeadLetter(inbox_id=entry.id, stage=stage, code=code, reason=reason, created_at=now)
    session.add(letter)
    session.flush()
    # HL7 table 0357: 200 unsupported message type, 207 application internal error.
    rejected = code == UnsupportedMessage.code
    owe(
        session,
        app_acks,
        entry.id,
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
        entity=f"inbox/{entry.id}",
        outcome=audit.Outcome.FAILURE,
        detail={"stage": stage, "code": code, "dead_letter": letter.id},
        now=now,
    )
    log.warning("dead-lettered", extra={"inbox_id": entry.id, "stage": stage, "code": code})


def pending_inbox_ids(db: Database, *, limit: int = 10_000, older_than: datetime | None = None) -> list[int]:
    """Inbox entries acknowledged but not yet through the pipeline, oldest first."""
    with db.reads() as session:
        query = select(InboxEntry.id).where(InboxEntry.status == InboxStatus.RECEIVED)
        if older_than is not None:
            query = query.where(InboxEntry.received_at < older_than)
        return list(session.execute(query.order_by(InboxEntry.id).limit(limit)).scalars())
