"""Re-identification: the one audited way from a pseudonym back to the identifier it was
made from (DESIGN: "read only through an audited, role-checked request").

The vault's pseudonyms are one-way (keyed HMAC), so the way back is a table the pipeline
fills in the identified zone (``reid_map``). A request names who asks and why; the asker
must be on ``reid_operators``, and the audit log records every request with its reason
and outcome, refused ones included, never the identifier itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import audit
from core.db import Database
from core.errors import SidecarError
from core.tables import ReidEntry


class ReidRefused(SidecarError):
    code = "reid-refused"


@dataclass(frozen=True)
class Reidentified:
    pseudonym: str
    authority: str
    identifier: str
    audit_seq: int


def reidentify(
    db: Database, reference: str, *, operator: str, reason: str, operators: list[str]
) -> Reidentified:
    """The identifier behind ``reference`` ("Patient/<pseudonym>" or the bare pseudonym).

    Raises ReidRefused (after auditing the refusal) when the operator is not allowed, the
    reason is empty, or the pseudonym is unknown.
    """
    pseudonym = reference.removeprefix("Patient/").strip()
    now = datetime.now(UTC)
    refusal: str | None = None
    if operator not in operators:
        refusal = "operator not allowed"
    elif not reason.strip():
        refusal = "a reason is required"
    with db.transaction() as session:
        entry = session.get(ReidEntry, pseudonym) if refusal is None else None
        if refusal is None and entry is None:
            refusal = "unknown pseudonym"
        seq = audit.append(
            session,
            actor=f"operator:{operator}",
            action="patient.reidentified" if refusal is None else "patient.reid_refused",
            entity=f"Patient/{pseudonym}",
            outcome=audit.Outcome.SUCCESS if refusal is None else audit.Outcome.FAILURE,
            # The reason is the operator's own words about the request, not patient data;
            # auditors need it to judge the access.
            detail={"reason": reason.strip()[:500]} | ({"refused": refusal} if refusal else {}),
            now=now,
        )
    if refusal is not None or entry is None:
        raise ReidRefused(f"re-identification refused: {refusal}")
    return Reidentified(pseudonym, entry.authority, entry.identifier, seq)
