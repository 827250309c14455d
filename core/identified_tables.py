"""The identified zone's tables: raw messages, quarantine, dead letters, identifier
tokens and values, the re-identification map, intake journal positions, application ACKs.

The model zone (``sandbox``) may not import this module (an import-linter contract), and
its database access is refused these tables (core.zones: PostgreSQL grants, the SQLite
authorizer). Status columns hold StrEnum values; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.model_tables import Base, BigId
from core.statuses import AppAckStatus, InboxStatus

__all__ = [
    "AppAck",
    "AppAckStatus",
    "DeadLetter",
    "InboxEntry",
    "InboxStatus",
    "IntakeJournalPosition",
    "PatientPhi",
    "PhiToken",
    "QuarantineEntry",
    "ReidEntry",
]


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
    # Patients scoped to one message (mapping.ids.scoped_key), counted as `unlinked` (0015).
    __table_args__ = (
        Index(
            "ix_reid_map_unlinked",
            "pseudonym",
            sqlite_where=text("authority = 'urn:sidecar:message-scope'"),
            postgresql_where=text("authority = 'urn:sidecar:message-scope'"),
        ),
    )

    pseudonym: Mapped[str] = mapped_column(String(64), primary_key=True)
    authority: Mapped[str] = mapped_column(String(400))  # CX-4 / Issuer of Patient ID, as sent
    identifier: Mapped[str] = mapped_column(String(400))  # CX-1 / Patient ID, as sent
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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
