"""Re-identification: the one audited way from a pseudonym back to the identifier it was
made from (DESIGN: "read only through an audited, role-checked request").

The vault's pseudonyms are one-way (keyed HMAC), so the way back is a table the pipeline
fills in the identified zone (``reid_map``). A request names who asks and why; the asker
must be on ``reid_operators``, and the audit log records every request with its reason
and outcome, refused ones included, never the identifier itself.

Who asks is the account the process really runs as (``current_operator``: its real uid),
never ``LOGNAME``/``USER``, which whoever starts the command chooses.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import audit
from core.db import Database
from core.errors import SidecarError
from core.tables import ReidEntry

__all__ = ["ReidRefused", "Reidentified", "account_name", "current_operator", "login_account", "reidentify"]

# The kernel's "no login uid" value ((uid_t)-1): a process not started from a login session.
_UNSET_LOGIN_UID = 0xFFFFFFFF
_LOGIN_UID_FILE = Path("/proc/self/loginuid")


def account_name(uid: int) -> str:
    """The passwd name of ``uid``, or ``uid:<n>`` for an account without an entry (a
    container's arbitrary uid), which still names it unambiguously."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def current_operator() -> str:
    """The account this process runs as, from its real uid: set by the kernel at login (or
    by sudo), not by anything the caller can put in the environment."""
    return account_name(os.getuid())


def login_account() -> str | None:
    """The account that logged in, when the kernel tracks it (Linux audit login uid, kept
    across sudo and unchangeable by the process) and it differs from the real uid: who
    typed `sudo -u sidecar sidecar reid`. None where there is no login uid."""
    try:
        uid = int(_LOGIN_UID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    if uid == _UNSET_LOGIN_UID or uid == os.getuid():
        return None
    return account_name(uid)


class ReidRefused(SidecarError):
    code = "reid-refused"


@dataclass(frozen=True)
class Reidentified:
    pseudonym: str
    authority: str
    identifier: str
    audit_seq: int


def reidentify(
    db: Database,
    reference: str,
    *,
    operator: str,
    reason: str,
    operators: list[str],
    login: str | None = None,
) -> Reidentified:
    """The identifier behind ``reference`` ("Patient/<pseudonym>" or the bare pseudonym).

    ``operator`` is checked against ``operators``; ``login`` (see login_account) is only
    recorded, so that the audit names the person behind a shared service account.

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
            detail={"reason": reason.strip()[:500]}
            | ({"login": login} if login else {})
            | ({"refused": refusal} if refusal else {}),
            now=now,
            patients=[pseudonym] if entry is not None else [],
        )
    if refusal is not None or entry is None:
        raise ReidRefused(f"re-identification refused: {refusal}")
    return Reidentified(pseudonym, entry.authority, entry.identifier, seq)
