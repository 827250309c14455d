"""What the API and its bulk exports do with a resource the leak guard stops: a dead letter
(one open per withheld version, however often it is asked for), an audit entry, and the
resources that pass, for a page or a file."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from core.tables import DeadLetter
from deid import Vault
from worker.leakguard import LeakGuard

__all__ = ["StoredRow", "screen_rows", "withhold"]

log = logging.getLogger("sidecar.api")


class StoredRow(Protocol):
    """A stored resource as the API reads it (a row of type, id, patient, body)."""

    @property
    def resource_type(self) -> str: ...
    @property
    def resource_id(self) -> str: ...
    @property
    def patient(self) -> str | None: ...
    @property
    def body(self) -> str: ...


def withhold(session: Session, actor: str, version: str, kinds: list[str], now: datetime) -> int:
    """Quarantine and audit one withheld resource version (``version``: Type/id/_history/n);
    answers the dead letter's id."""
    reason = f"API response {version} carries identifier(s) of kind {', '.join(kinds)}; withheld"
    letter = (
        session.execute(
            select(DeadLetter).where(
                DeadLetter.stage == "api", DeadLetter.reason == reason, DeadLetter.resolved_at.is_(None)
            )
        )
        .scalars()
        .first()
    )
    if letter is None:
        letter = DeadLetter(stage="api", code="identifier-leak", reason=reason, created_at=now)
        session.add(letter)
        session.flush()
    audit.append(
        session,
        actor=actor,
        action="fhir.withheld",
        entity=version,
        outcome=audit.Outcome.FAILURE,
        detail={"kinds": kinds, "dead_letter": letter.id},
        now=now,
    )
    log.error("API response withheld by the leak guard", extra={"entity": version, "kinds": kinds})
    return letter.id


def screen_rows(
    session: Session,
    vault: Vault,
    actor: str,
    rows: Sequence[StoredRow],
    now: datetime,
    withheld: list[str],
) -> list[dict[str, Any]]:
    """The resources of ``rows`` that pass the leak guard; each other one is withheld and
    named in ``withheld`` as "Type/id (kinds)". A resource tied to no patient passes: no
    identifiers are known to compare it with."""
    guard = LeakGuard(vault)
    out = []
    for row in rows:
        resource = json.loads(row.body)
        kinds = guard.kinds_in(session, row.patient, resource) if row.patient else []
        if kinds:
            ref = f"{row.resource_type}/{row.resource_id}"
            version = resource.get("meta", {}).get("versionId", "?")
            withhold(session, actor, f"{ref}/_history/{version}", kinds, now)
            withheld.append(f"{ref} ({', '.join(kinds)})")
            continue
        out.append(resource)
    return out
