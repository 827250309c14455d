"""The states rows go through, as stored in their status columns: StrEnums, apart from the
table classes, so that reading a count by status (`sidecar stats`) needs no ORM.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AppAckStatus", "InboxStatus", "JobOutputKind", "JobStatus"]


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


class JobOutputKind(StrEnum):
    SUMMARY = "summary"  # body: verified sentences, citations, inputs, prompt, model (docs/model-contract.md)
    FAILED = "failed"  # code and reason
