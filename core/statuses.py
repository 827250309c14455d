"""The states rows go through, as stored in their status columns: StrEnums, apart from the
table classes, so that reading a count by status (`sidecar stats`) needs no ORM.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "PENDING_EVENTS_WHERE",
    "AppAckStatus",
    "InboxStatus",
    "JobOutputKind",
    "JobStatus",
]


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


# The outbox events waiting for the relay, as the partial index ix_outbox_pending (migration
# 0021) states it: a query that names it word for word can use that index, however stale
# the planner's statistics.
PENDING_EVENTS_WHERE = "sent_at IS NULL AND blocked_at IS NULL"
