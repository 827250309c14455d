"""The hash of one audit entry, chained to the one before: standard library only, shared by
the log and the offline bundle verifier."""

from __future__ import annotations

import hashlib
import json

__all__ = ["GENESIS", "entry_digest"]

GENESIS = "0" * 64


def entry_digest(
    seq: int, at: str, actor: str, action: str, outcome: str, entity: str, detail: str, prev: str
) -> str:
    """SHA-256 (hex) of the entry's fields as stored and the previous entry's hash."""
    material = json.dumps([seq, at, actor, action, outcome, entity, detail, prev], separators=(",", ":"))
    return hashlib.sha256(material.encode()).hexdigest()
