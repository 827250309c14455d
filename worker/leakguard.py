"""The outgoing leak guard: no event leaves carrying an identifier of its patient.

De-identification should make this redundant; it exists for the day it is not (a new
feed, a mapping bug). Each event body is cut into keyed tokens and compared with the
tokens stored for the event's patient (subject); a hit returns the kinds found and the
relay blocks the event instead of publishing it. The same check guards the other two
ways out: API responses (sidecar.api) and the sandbox's prompts and answers, which the
sandbox submits for screening (worker.screen) because it holds no key to make tokens.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.tables import PhiToken
from deid import Vault
from deid.tokens import payload_tokens

_CACHE_PATIENTS = 1024


class LeakGuard:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._cache: OrderedDict[str, dict[str, str]] = OrderedDict()

    def _tokens(self, session: Session, patient: str) -> dict[str, str]:
        # Read in the relay's own transaction (a second connection would wait on SQLite's
        # write lock that transaction holds). The cache lives for one relay round: a
        # patient's token set grows as new messages arrive (see forget()).
        if patient not in self._cache:
            query = select(PhiToken.token, PhiToken.kind).where(PhiToken.patient == patient)
            self._cache[patient] = {token: kind for token, kind in session.execute(query).all()}
            if len(self._cache) > _CACHE_PATIENTS:
                self._cache.popitem(last=False)
        return self._cache[patient]

    def forget(self) -> None:
        self._cache.clear()

    def check(self, session: Session, body: str) -> list[str]:
        """Kinds of the patient's identifiers found in the event (empty: safe to publish)."""
        event: dict[str, Any] = json.loads(body)
        subject = str(event.get("subject", ""))
        if not subject.startswith("Patient/"):
            return []
        return self.kinds_in(session, subject.removeprefix("Patient/"), event.get("data"))

    def kinds_in(self, session: Session, patient: str, payload: Any) -> list[str]:
        """Kinds of ``patient``'s identifiers found in any payload: a FHIR resource or
        Bundle (API responses), or plain text (a sandbox prompt or a model's answer)."""
        known = self._tokens(session, patient)
        if not known:
            return []
        return sorted({known[t] for t in payload_tokens(payload, self._vault) if t in known})
