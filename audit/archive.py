"""Retention: entries older than ``audit_retention_days`` leave the database only through an
archive bundle, written, checked and recorded first.

The archived entries keep their place in the chain and in the Merkle tree (seq, time, hash,
link), so every checkpoint and proof stays valid; their content (actor, action, entity,
detail) is emptied and their by-patient index rows deleted. One ``audit.archived`` entry
names the range, the bundle's SHA-256 and the checkpoint it was proven against;
``audit.verify`` accepts an emptied entry only inside such a range.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, delete, func, select, update

from audit.bundle import export_bundle
from audit.log import ARCHIVE_ACTION, ARCHIVED, append
from audit.verify_bundle import verify as verify_bundle
from core.model_tables import AuditEntry, AuditPatient

__all__ = ["Archived", "archive"]


@dataclass(frozen=True)
class Archived:
    first: int
    last: int
    sha256: str


def archive(engine: Engine, key: Ed25519PrivateKey, *, before: str, out: Path, actor: str) -> Archived | None:
    """Archive the entries at the start of the log older than ``before`` (an ISO instant as
    the log stores them) into the bundle ``out``; None when there is nothing to archive."""
    with engine.connect() as connection:
        first = connection.execute(
            select(func.min(AuditEntry.seq)).where(AuditEntry.outcome != ARCHIVED)
        ).scalar()
        newer = connection.execute(select(func.min(AuditEntry.seq)).where(AuditEntry.at >= before)).scalar()
        last_seq = connection.execute(select(func.max(AuditEntry.seq))).scalar() or 0
    last = (newer - 1) if newer is not None else last_seq
    if first is None or last < first:
        return None
    text = export_bundle(engine, key, patient=None, since=None, seq_range=(first, last))
    verify_bundle(text, key.public_key())  # raises before anything is emptied
    out.write_text(text, encoding="utf-8")
    with out.open("rb") as written:
        os.fsync(written.fileno())
    digest = hashlib.sha256(text.encode()).hexdigest()
    with engine.begin() as connection:
        connection.execute(
            update(AuditEntry)
            .where(AuditEntry.seq >= first, AuditEntry.seq <= last)
            .values(actor="", action="", entity="", detail="{}", outcome=ARCHIVED)
        )
        connection.execute(delete(AuditPatient).where(AuditPatient.seq >= first, AuditPatient.seq <= last))
        append(
            connection,
            actor=actor,
            action=ARCHIVE_ACTION,
            entity=f"audit_log/{first}-{last}",
            detail={"from": first, "to": last, "before": before, "bundle_sha256": digest},
        )
    return Archived(first, last, digest)
