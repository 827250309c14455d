"""Append-only, tamper-evident audit log."""

from audit.log import (
    ChainReport,
    Outcome,
    PendingEntry,
    append,
    append_dbapi,
    chain_pending,
    leaves,
    pending_count,
    verify,
)

__all__ = [
    "ChainReport",
    "Outcome",
    "PendingEntry",
    "append",
    "append_dbapi",
    "chain_pending",
    "leaves",
    "pending_count",
    "verify",
]
