"""The tables that hold no identifier: the de-identified store, jobs, the model zone's
outputs, the audit chain and operational counters (SQLAlchemy 2; changes go through
Alembic, core/migrations).

Split from the identified zone's tables (``core.identified_tables``) so that the model zone
(``sandbox``) can import these without importing those: an import-linter contract forbids
the sandbox that module. ``core.tables`` re-exports both for the identified zone.
Status columns hold StrEnum values, never free text; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.statuses import PENDING_EVENTS_WHERE, JobOutputKind, JobStatus

__all__ = [
    "AuditCheckpoint",
    "AuditCursor",
    "AuditEntry",
    "AuditHead",
    "AuditPatient",
    "AuditPending",
    "AuthAssertion",
    "Base",
    "BigId",
    "EventTally",
    "ExportJob",
    "Job",
    "JobOutput",
    "JobOutputKind",
    "JobStatus",
    "OutboxEvent",
    "PipelineStat",
    "Resource",
    "ResourceHistory",
    "Subscription",
]

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
BigId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    pass


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
    # What the FHIR API searches on (core.search_index), written with the row.
    search_tokens: Mapped[str | None] = mapped_column(Text)
    date_low: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    date_high: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuthAssertion(Base):
    """A SMART client assertion already used (its jti), kept until it expires: a replay is
    refused, also after a restart."""

    __tablename__ = "auth_assertions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # of client and jti
    client: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ExportJob(Base):
    """A FHIR Bulk Data export (``$export``): asked by one API client, run by the API's
    exporter, its NDJSON files under the data directory until ``expires_at``."""

    __tablename__ = "export_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client: Mapped[str] = mapped_column(String(80))  # the audit actor that asked
    level: Mapped[str] = mapped_column(String(16))  # system, patient or group
    group_id: Mapped[str | None] = mapped_column(String(64))
    types: Mapped[str] = mapped_column(Text)  # comma-separated
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    request_url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)  # accepted, running, complete, failed
    progress: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    transaction_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    manifest: Mapped[str | None] = mapped_column(Text)  # JSON: output and error files with counts
    error: Mapped[str | None] = mapped_column(Text)


class Subscription(Base):
    """A topic-based rest-hook subscription (Subscriptions R5 Backport IG for R4): the outbox
    events of its topic, POSTed to its endpoint in outbox order from ``cursor`` on."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client: Mapped[str] = mapped_column(String(80))  # the audit actor that made it
    topic: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(Text)
    headers: Mapped[str] = mapped_column(Text)  # JSON list of "Name: value"
    secret: Mapped[str] = mapped_column(String(128))  # HMAC key of its notifications' signatures
    payload: Mapped[str] = mapped_column(String(16))  # full-resource, id-only or empty
    base_url: Mapped[str] = mapped_column(Text)  # the FHIR base its notifications' URLs are under
    status: Mapped[str] = mapped_column(String(16), index=True)  # requested, active, error, off
    cursor: Mapped[int] = mapped_column(BigInteger)  # the last outbox id handled
    start_cursor: Mapped[int] = mapped_column(BigInteger)  # the last outbox id before it began
    events: Mapped[int] = mapped_column(BigInteger, default=0)  # events since it started
    missed: Mapped[int] = mapped_column(BigInteger, default=0)  # dead-lettered after the last try
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[str] = mapped_column(Text)  # the Subscription resource as the client sees it


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
        # What the relay polls for on PostgreSQL (migration 0021): the waiting events alone.
        Index("ix_outbox_pending", "id", postgresql_where=text(PENDING_EVENTS_WHERE)).ddl_if(
            dialect="postgresql"
        ),
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
    # Written by the identified zone's screen only (the model zone may not update them):
    # screenings answered for this job, and whether one found an identifier (then the job
    # failed and every later screening of it is refused; worker.screen).
    screenings: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    screen_leak: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class JobOutput(Base):
    """What the model zone hands back for a job: its summary, or why it failed. The model
    zone may only insert here; the identified zone checks each row again (it belongs to a
    running job, the document to that job's patient, no known identifier in it), stores it
    (resources, outbox, or a dead letter) and deletes the row (sidecar.outputs)."""

    __tablename__ = "job_outputs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigInteger, index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    body: Mapped[str | None] = mapped_column(Text)  # JSON
    code: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Append-only, hash-chained audit log. ``seq`` is gapless: assigned under the head lock."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_actor_seq", "actor", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))  # ISO text, hashed exactly as stored
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    entity: Mapped[str] = mapped_column(String(200))
    detail: Mapped[str] = mapped_column(Text)  # canonical JSON, no identifiers
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditPatient(Base):
    """Index of the audit log by patient: one row per (patient pseudonym, entry) that the
    entry's detail names under "patients" (hashed with the entry, so the index can be
    checked against the chain). Written with the entry, never updated."""

    __tablename__ = "audit_patients"

    patient: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class AuditCheckpoint(Base):
    """A signed checkpoint of the audit log (C2SP signed note), as made every
    ``audit_checkpoint_every`` entries or ``audit_checkpoint_interval_s`` seconds. A copy:
    what proves something is the note an auditor or witness keeps outside the database."""

    __tablename__ = "audit_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    note: Mapped[str] = mapped_column(Text)


class AuditCursor(Base):
    """How far a consumer of the log (the syslog forwarder) has durably delivered: the log is
    its spool, so nothing is lost while the consumer's peer is down."""

    __tablename__ = "audit_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


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


class EventTally(Base):
    """The events one relay process published, added to in the transaction that marks them
    sent: ``events.published`` of ``sidecar stats`` and ``GET /status`` is the sum of these,
    not a count of the outbox, which holds every event ever written (a monitor's poll read
    it all; on PostgreSQL, 60 ms at 60,000 events and growing)."""

    __tablename__ = "event_tallies"

    relay: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    published: Mapped[int] = mapped_column(BigInteger)


class PipelineStat(Base):
    """CPU seconds one pipeline process spent in one stage, and the entries it handled:
    operational counters for ``sidecar stats`` (no data values)."""

    __tablename__ = "pipeline_stats"

    process: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    stage: Mapped[str] = mapped_column(String(32), primary_key=True)
    cpu_s: Mapped[float] = mapped_column(Float)
    entries: Mapped[int] = mapped_column(BigInteger)
