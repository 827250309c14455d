"""The database tables (SQLAlchemy 2). Changes go through Alembic (core/migrations).

Status columns hold StrEnum values, never free text, so code never parses status strings.
Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


class InboxStatus(StrEnum):
    RECEIVED = "received"  # durable, acknowledged, not yet through the pipeline
    PROCESSED = "processed"
    FAILED = "failed"  # permanently; a dead letter names the reason


class AppAckStatus(StrEnum):
    PENDING = "pending"  # to be delivered (again) at due_at
    SENT = "sent"  # the sender's system confirmed it
    FAILED = "failed"  # gave up after the attempts allowed; a dead letter names the reason


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class InboxEntry(Base):
    """Raw inbound message, exactly as received. Identified zone."""

    __tablename__ = "inbox"
    __table_args__ = (
        UniqueConstraint("sender", "control_id", name="uq_inbox_sender_control_id"),
        Index("ix_inbox_status_id", "status", "id"),
        # For the counts of `sidecar stats` (migration 0012): only the rare rows they count.
        Index(
            "ix_inbox_resent",
            "resend_count",
            sqlite_where=text("resend_count > 0"),
            postgresql_where=text("resend_count > 0"),
        ),
        Index(
            "ix_inbox_repaired", "id", sqlite_where=text("repaired = 1"), postgresql_where=text("repaired")
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))  # connector: mllp, file, dicom
    peer: Mapped[str] = mapped_column(String(128))
    sender: Mapped[str] = mapped_column(String(400))  # MSH-3|MSH-4
    control_id: Mapped[str] = mapped_column(String(199))  # MSH-10
    message_type: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    charset: Mapped[str] = mapped_column(String(32))
    repaired: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=InboxStatus.RECEIVED)
    resend_count: Mapped[int] = mapped_column(Integer, default=0)
    last_resend_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_code: Mapped[str | None] = mapped_column(String(64))


class IntakeJournalPosition(Base):
    """How far each MLLP intake journal (a file of the listener's, connectors.journal) has
    been stored in the inbox; written in the same transaction as the rows it covers."""

    __tablename__ = "intake_journals"

    journal_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    moved_seq: Mapped[int] = mapped_column(BigInteger)


class QuarantineEntry(Base):
    """Bytes that could not be taken as HL7, kept with the reason (never only logged)."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))
    peer: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class DeadLetter(Base):
    """A pipeline failure that retrying the same input will not fix."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inbox_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    job_id: Mapped[int | None] = mapped_column(BigInteger, index=True)  # sandbox failures
    stage: Mapped[str] = mapped_column(String(32))  # map, deid, store, sandbox
    code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)  # no data values: codes, paths, kinds
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Resource(Base):
    """Current version of each de-identified FHIR resource. De-identified zone."""

    __tablename__ = "resources"
    __table_args__ = (Index("ix_resources_patient_type", "patient", "resource_type"),)

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    patient: Mapped[str | None] = mapped_column(String(64))  # pseudonym
    body: Mapped[str] = mapped_column(Text)  # FHIR JSON incl. meta.versionId
    content_hash: Mapped[str] = mapped_column(String(64))  # of the content without meta
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The newest inbox entry that stated this resource, changed or not (None: not from the
    # inbox). An older entry processed later (a replay) must not undo what it said.
    source_seq: Mapped[int | None] = mapped_column(BigInteger)


class ResourceHistory(Base):
    """Every version ever stored, so a Provenance can name exact input versions."""

    __tablename__ = "resource_history"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(String(64))  # inbox:<id> or job:<id>
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxEvent(Base):
    """An event written in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_unsent", "sent_at", "id"),
        Index(
            "ix_outbox_blocked",
            "id",
            sqlite_where=text("blocked_at IS NOT NULL"),
            postgresql_where=text("blocked_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    routing_key: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)  # CloudEvents JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    blocked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # leak guard
    block_reason: Mapped[str | None] = mapped_column(Text)
    # The pipeline ran the leak check when it wrote the row: the relay need not again.
    screened: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class PhiToken(Base):
    """Keyed hashes of a patient's identifier values (never the values): what the outgoing
    leak guard compares payloads against. Identified zone."""

    __tablename__ = "phi_tokens"

    patient: Mapped[str] = mapped_column(String(64), primary_key=True)  # pseudonym
    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))


class PatientPhi(Base):
    """Identifying values earlier messages reported about a patient (names, ids, phones,
    addresses...), so the scrubber knows them when a later message mentions one it does not
    carry itself (an ORU whose note names the patient). Identified zone; the model zone's
    database role is refused it."""

    __tablename__ = "patient_phi"

    patient: Mapped[str] = mapped_column(String(64), primary_key=True)  # pseudonym
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of kind and value
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(Text)


class ReidEntry(Base):
    """Pseudonym -> the identifier it was made from: the only way back from the
    de-identified zone, read solely through ``sidecar reid`` (operator-checked, audited).
    Identified zone; never readable by the sandbox."""

    __tablename__ = "reid_map"

    pseudonym: Mapped[str] = mapped_column(String(64), primary_key=True)
    authority: Mapped[str] = mapped_column(String(400))  # CX-4 / Issuer of Patient ID, as sent
    identifier: Mapped[str] = mapped_column(String(400))  # CX-1 / Patient ID, as sent
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """A summary job for one patient; triggers close together coalesce into one pending row."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(
            "uq_jobs_one_pending",
            "kind",
            "patient",
            unique=True,
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))  # discharge, lab-report, ...
    patient: Mapped[str] = mapped_column(String(64))  # pseudonym
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING, index=True)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    triggers: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[str | None] = mapped_column(String(200))  # DocumentReference/<id>
    error_code: Mapped[str | None] = mapped_column(String(64))


class AppAck(Base):
    """An HL7 application acknowledgement owed to a sender that asked for one (MSH-16) and
    has a return path configured: written in the transaction that decides the message's
    outcome, delivered afterwards (an outbox, like ``outbox`` for events)."""

    __tablename__ = "app_acks"
    __table_args__ = (Index("ix_app_acks_status_due", "status", "due_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inbox_id: Mapped[int] = mapped_column(BigInteger, unique=True)  # one outcome per message
    code: Mapped[str] = mapped_column(String(2))  # AA, AE, AR
    route: Mapped[str] = mapped_column(String(200))  # host:port of the sender's ACK listener
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # the ACK message, as it is sent
    status: Mapped[str] = mapped_column(String(16), default=AppAckStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(200))  # no data values


class AuditEntry(Base):
    """Append-only, hash-chained audit log. ``seq`` is gapless: assigned under the head lock."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))  # ISO text, hashed exactly as stored
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    entity: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON, no identifiers
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditPending(Base):
    """Audit entries written with the action but not yet linked into the chain: the
    PostgreSQL intake writes a lone message and its entry in one autocommit statement (one
    round trip), which cannot read and lock the chain head. ``audit.chain_pending`` appends
    them to the chain in id order and deletes them, in one transaction."""

    __tablename__ = "audit_pending"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    entity: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)  # JSON (re-serialised canonically when chained)


class AuditHead(Base):
    """One row: the chain's tip. Appenders lock it so concurrent writers never fork the chain."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class PipelineStat(Base):
    """CPU seconds one pipeline process spent in one stage, and the entries it handled:
    operational counters for ``sidecar stats`` (no data values)."""

    __tablename__ = "pipeline_stats"

    process: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    cpu_s: Mapped[float] = mapped_column(Float)
    entries: Mapped[int] = mapped_column(BigInteger)
