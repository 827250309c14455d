"""The outgoing leak guard: no event leaves carrying an identifier of its patient.

De-identification should make this redundant; it exists for the day it is not (a new
feed, a mapping bug). Each event body is cut into keyed tokens and compared with the
tokens stored for the event's patient (subject); a hit returns the kinds found and the
relay blocks the event instead of publishing it. The same check guards the other two
ways out: API responses (sidecar.api) and the sandbox's prompts and answers, which the
sandbox submits for screening (worker.screen) because it holds no key to make tokens.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from core.store import block_reason
from core.tables import DeadLetter, PhiToken
from deid import Vault
from deid.tokens import SKIP_KEYS, payload_tokens

log = logging.getLogger("sidecar.worker.leakguard")

_CACHE_PATIENTS = 1024
_PATIENTS_PER_QUERY = 500
_CACHE_TEXTS = 50_000  # strings whose token hashes are kept: a feed's vocabulary repeats
# A whole string shaped as a FHIR date (at least year-month-day; fractions of a second of at
# most three digits) holds no name and no digit run long enough to be an identifier's token,
# and dates are not stored as tokens (they are shifted): it is not cut into tokens. Almost
# every such string is new (the times of each result), so hashing them filled the text
# cache with entries never met again. Its words could only meet a short number by chance
# (an MRN "2026" and the year 2026).
_DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?(?:Z|[+-]\d{2}:\d{2})?)?")
_NONE: frozenset[str] = frozenset()


def _strings(node: Any) -> list[str]:
    """The strings ``payload_tokens`` reads (the same walk, without its generators: it runs
    over every outgoing event). Plain JSON is walked by exact type, strings taken in place."""
    out: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            values: Iterable[Any] = (v for k, v in item.items() if k not in SKIP_KEYS)
        elif kind is list:
            values = item
        elif isinstance(item, str):
            out.append(item)
            continue
        elif isinstance(item, Mapping):
            values = (v for k, v in item.items() if k not in SKIP_KEYS)
        elif isinstance(item, list):
            values = item
        else:
            continue  # numbers, booleans, null
        for value in values:
            if type(value) is str:
                out.append(value)
            elif value is not None and not isinstance(value, bool | int | float):
                stack.append(value)
    return out


class LeakGuard:
    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._cache: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._read_at: dict[str, float] = {}  # patient -> when its tokens were read (monotonic)
        # text -> its token hashes. A payload's tokens are the union of its strings' tokens,
        # and most strings (code displays, units, statuses) recur in every event: one keyed
        # hash per word run was ~0.3 ms of CPU per event without this.
        self._texts: OrderedDict[str, frozenset[str]] = OrderedDict()

    def _tokens(self, session: Session, patient: str) -> dict[str, str]:
        # Read in the relay's own transaction (a second connection would wait on SQLite's
        # write lock that transaction holds). The cache lives for one relay round: a
        # patient's token set grows as new messages arrive (see forget()).
        if patient not in self._cache:
            query = select(PhiToken.token, PhiToken.kind).where(PhiToken.patient == patient)
            self._cache[patient] = {token: kind for token, kind in session.execute(query).all()}
            self._read_at[patient] = time.monotonic()
            if len(self._cache) > _CACHE_PATIENTS:
                evicted, _ = self._cache.popitem(last=False)
                self._read_at.pop(evicted, None)
        return self._cache[patient]

    def forget(self) -> None:
        self._cache.clear()
        self._read_at.clear()

    def prefetch(self, session: Session, patients: Iterable[str], *, max_age_s: float | None = None) -> None:
        """Read the tokens of many patients at once (a relay round's subjects). ``max_age_s``:
        keep what was read of a patient less than this long ago (None: whenever it was read).
        Every one of them is cached afterwards, whatever the cache's bound: ``learn`` adds to
        what is read here, and must never start a patient's tokens from nothing."""
        now = time.monotonic()
        wanted = set(patients)
        missing = sorted(
            p
            for p in wanted
            if p not in self._cache or (max_age_s is not None and now - self._read_at.get(p, 0.0) > max_age_s)
        )
        for start in range(0, len(missing), _PATIENTS_PER_QUERY):
            chunk = missing[start : start + _PATIENTS_PER_QUERY]
            found: dict[str, dict[str, str]] = {p: {} for p in chunk}
            query = select(PhiToken.patient, PhiToken.token, PhiToken.kind).where(PhiToken.patient.in_(chunk))
            for patient, token, kind in session.execute(query):
                found[patient][token] = kind
            for patient, tokens in found.items():
                self._cache[patient] = tokens
                self._read_at[patient] = now
        for patient in wanted:  # the least lately asked for go first
            self._cache.move_to_end(patient)
        while len(self._cache) > max(_CACHE_PATIENTS, len(wanted)):
            evicted, _ = self._cache.popitem(last=False)
            self._read_at.pop(evicted, None)

    def learn(self, patient: str, tokens: dict[str, str]) -> None:
        """Add tokens not stored yet (the pipeline's batch, before its commit)."""
        self._cache.setdefault(patient, {}).update(tokens)

    def check_events(self, session: Session, bodies: Sequence[str]) -> list[list[str]]:
        """``check`` for a batch of event bodies, with one token read for all their patients."""
        events = [orjson.loads(body) for body in bodies]
        subjects = [str(e.get("subject", "")) for e in events]
        patients = [s.removeprefix("Patient/") for s in subjects]
        self.prefetch(
            session, [p for s, p in zip(subjects, patients, strict=True) if s.startswith("Patient/")]
        )
        return [
            self.kinds_in(session, p, e.get("data")) if s.startswith("Patient/") else []
            for e, s, p in zip(events, subjects, patients, strict=True)
        ]

    def check(self, session: Session, body: str) -> list[str]:
        """Kinds of the patient's identifiers found in the event (empty: safe to publish)."""
        event: dict[str, Any] = orjson.loads(body)
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
        return sorted({known[t] for text in _strings(payload) for t in self._text_tokens(text) if t in known})

    def payload_tokens(self, payload: Any) -> frozenset[str]:
        """The keyed tokens of a payload, without the database: made before a transaction
        and compared with ``kinds_of`` inside it."""
        return frozenset(t for text in _strings(payload) for t in self._text_tokens(text))

    def kinds_of(self, session: Session, patient: str, tokens: frozenset[str]) -> list[str]:
        """``kinds_in`` over ``payload_tokens`` made earlier."""
        known = self._tokens(session, patient)
        return sorted({known[t] for t in tokens if t in known}) if known else []

    def _text_tokens(self, text: str) -> frozenset[str]:
        if _DATE_SHAPE.fullmatch(text):
            return _NONE
        tokens = self._texts.get(text)
        if tokens is None:
            tokens = frozenset(payload_tokens(text, self._vault))
            self._texts[text] = tokens
            if len(self._texts) > _CACHE_TEXTS:
                self._texts.popitem(last=False)
        return tokens


def record_block(
    session: Session, *, actor: str, outbox_id: int, event_id: str, kinds: list[str], now: datetime
) -> None:
    """The dead letter, audit entry and log line of a blocked event (its row is marked by
    the caller), the same whoever stopped it."""
    session.add(
        DeadLetter(
            stage="relay", code="identifier-leak", reason=block_reason(event_id, kinds), created_at=now
        )
    )
    audit.append(
        session,
        actor=actor,
        action="event.blocked",
        entity=f"outbox/{outbox_id}",
        outcome=audit.Outcome.FAILURE,
        detail={"event": event_id, "kinds": kinds},
        now=now,
    )
    log.error("event blocked by the leak guard", extra={"outbox_id": outbox_id, "kinds": kinds})
