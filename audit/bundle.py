"""Audit export bundles: a patient's entries since a time, each with its RFC 9162 inclusion
proof in a checkpoint signed now, the earlier stored checkpoints with consistency proofs to
it, the log's public key, and a signature over all of it (``audit.verify_bundle`` checks one
offline)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from audit.checkpoint import ORIGIN, Checkpoint, sign
from audit.log import ARCHIVED, leaves
from audit.merkle import Tree
from audit.verify_bundle import FORMAT, signed_bundle
from core.model_tables import AuditCheckpoint, AuditEntry, AuditPatient

__all__ = ["EARLIER_CHECKPOINTS", "export_bundle"]

EARLIER_CHECKPOINTS = 50  # the most recent stored checkpoints carried, with consistency proofs


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def export_bundle(
    engine: Engine,
    key: Ed25519PrivateKey,
    *,
    patient: str | None,
    since: str | None,
    seq_range: tuple[int, int] | None = None,
) -> str:
    """The signed bundle text. ``patient``: a pseudonym (entries naming it); ``since``: an
    ISO instant as the log stores them (entries at or after it); ``seq_range``: first and
    last seq. Entries already archived (their content emptied) are left out."""
    all_leaves = leaves(engine)
    tree = Tree(all_leaves)
    checkpoint = sign(Checkpoint(ORIGIN, tree.size, tree.root), key)
    with Session(engine) as session:
        query = select(AuditEntry).where(AuditEntry.seq <= tree.size, AuditEntry.outcome != ARCHIVED)
        if seq_range is not None:
            query = query.where(AuditEntry.seq >= seq_range[0], AuditEntry.seq <= seq_range[1])
        if patient is not None:
            query = query.join(AuditPatient, AuditPatient.seq == AuditEntry.seq).where(
                AuditPatient.patient == patient
            )
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        entries = [
            {
                "seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "outcome": e.outcome,
                "entity": e.entity, "detail": e.detail, "prev_hash": e.prev_hash, "hash": e.hash,
                "inclusion": _b64(tree.inclusion(e.seq - 1)),
            }
            for e in session.execute(query.order_by(AuditEntry.seq)).scalars()
        ]  # fmt: skip
        stored = session.execute(
            select(AuditCheckpoint.size, AuditCheckpoint.note)
            .where(AuditCheckpoint.size <= tree.size, AuditCheckpoint.size > 0)
            .order_by(AuditCheckpoint.size.desc())
            .limit(EARLIER_CHECKPOINTS)
        ).all()
    earlier = [{"note": note, "consistency": _b64(tree.consistency(size))} for size, note in reversed(stored)]
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = {
        "format": FORMAT,
        "patient": patient,
        "since": since,
        "made": datetime.now(UTC).isoformat(timespec="seconds"),
        "public_key": public.decode(),
        "checkpoint": checkpoint,
        "entries": entries,
        "checkpoints": earlier,
    }
    text = json.dumps(payload, indent=1, ensure_ascii=False)
    return signed_bundle(text, key.sign)
