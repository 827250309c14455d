"""All database tables, for the identified zone (which may touch every one of them).

Defined in two modules so that the model zone can import the tables it may use without
the identified ones: ``core.model_tables`` (no identifiers) and ``core.identified_tables``.
The model zone imports ``core.model_tables`` only (an import-linter contract forbids it this
module and ``core.identified_tables``).
"""

from __future__ import annotations

from core.identified_tables import (
    AppAck,
    AppAckStatus,
    DeadLetter,
    InboxEntry,
    InboxStatus,
    IntakeJournalPosition,
    PatientPhi,
    PhiToken,
    QuarantineEntry,
    ReidEntry,
)
from core.model_tables import (
    AuditCheckpoint,
    AuditCursor,
    AuditEntry,
    AuditHead,
    AuditPatient,
    AuditPending,
    AuthAssertion,
    Base,
    BigId,
    EventTally,
    ExportJob,
    Job,
    JobOutput,
    JobOutputKind,
    JobStatus,
    OutboxEvent,
    PipelineStat,
    Resource,
    ResourceHistory,
    Subscription,
)
from core.statuses import PENDING_EVENTS_WHERE

__all__ = [
    "PENDING_EVENTS_WHERE",
    "AppAck",
    "AppAckStatus",
    "AuditCheckpoint",
    "AuditCursor",
    "AuditEntry",
    "AuditHead",
    "AuditPatient",
    "AuditPending",
    "AuthAssertion",
    "Base",
    "BigId",
    "DeadLetter",
    "EventTally",
    "ExportJob",
    "InboxEntry",
    "InboxStatus",
    "IntakeJournalPosition",
    "Job",
    "JobOutput",
    "JobOutputKind",
    "JobStatus",
    "OutboxEvent",
    "PatientPhi",
    "PhiToken",
    "PipelineStat",
    "QuarantineEntry",
    "ReidEntry",
    "Resource",
    "ResourceHistory",
    "Subscription",
]
