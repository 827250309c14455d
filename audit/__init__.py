"""Append-only, tamper-evident audit log: the hash chain (``audit.log``), RFC 9162 Merkle
checkpoints and proofs (``audit.merkle``, ``audit.checkpoint``, ``audit.checkpointer``),
export bundles and their offline verifier (``audit.bundle``, ``audit.verify_bundle``), the
BALP AuditEvent view (``audit.auditevent``), search (``audit.search``) and syslog forwarding
(``audit.syslog``).

The names below load ``audit.log`` (and with it SQLAlchemy) on first use, not on import: the
offline verifier, ``python -m audit.verify_bundle``, runs where only the standard library and
``cryptography`` are installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.log import (
        PATIENTS,
        PURPOSE,
        SOURCE,
        ChainReport,
        Context,
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
    "PATIENTS",
    "PURPOSE",
    "SOURCE",
    "ChainReport",
    "Context",
    "Outcome",
    "PendingEntry",
    "append",
    "append_dbapi",
    "chain_pending",
    "leaves",
    "pending_count",
    "verify",
]


def __getattr__(name: str) -> Any:
    # As core.frontdoor.lazy_exports does, written out: the offline verifier may not import core.
    if name in __all__:
        return getattr(importlib.import_module("audit.log"), name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
