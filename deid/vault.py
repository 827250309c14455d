"""Keyed pseudonyms, resource ids and date shifts.

All three are HMAC-SHA256 under keys derived from one secret, so they are stable across
restarts and hosts that share the secret, and cannot be recomputed (or reversed by
enumerating MRNs) by anyone who holds only the de-identified data. Each purpose gets its
own derived key so that, say, a resource id can never equal a pseudonym by construction.
The raw secret is not kept after the derivation.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from typing import NoReturn

from core.errors import ConfigError, DeidError

MIN_SECRET_BYTES = 16

# 128 bits: collision-free for any realistic number of patients, and 32 hex characters
# fit FHIR's id type ([A-Za-z0-9\-\.]{1,64}).
_ID_HEX_CHARS = 32
_TOKEN_CACHE = 100_000


def _derive(secret: bytes, purpose: str) -> bytes:
    # The label is versioned so a future change of scheme can coexist with the old one.
    return hmac.new(secret, f"sidecar/deid/{purpose}/v1".encode(), hashlib.sha256).digest()


def _encode(*fields: str) -> bytes:
    # Length-prefixing keeps ("ab", "c") and ("a", "bc") apart.
    out = bytearray()
    for field in fields:
        data = field.encode("utf-8")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def _mac(key: bytes, *fields: str) -> bytes:
    return hmac.new(key, _encode(*fields), hashlib.sha256).digest()


def normalise_authority(authority: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", authority).split()).casefold()


def normalise_value(value: str) -> str:
    # Identifier values stay case-sensitive (some systems issue "a12" and "A12"); NFKC
    # only folds full-width digits and letters that Chinese systems sometimes send.
    return unicodedata.normalize("NFKC", value).strip()


class Vault:
    """Keyed pseudonyms and date shifts. The secret lives outside the database (file or env); never
    store or log it."""

    __slots__ = ("_date_key", "_max_days", "_pseudonym_key", "_resource_key", "_token_key", "_tokens")

    def __init__(self, secret: bytes, *, date_shift_max_days: int = 30) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"de-identification secret must be at least {MIN_SECRET_BYTES} bytes")
        if isinstance(date_shift_max_days, bool) or not isinstance(date_shift_max_days, int):
            raise ConfigError("date_shift_max_days must be an integer")
        if date_shift_max_days < 1:
            raise ConfigError("date_shift_max_days must be at least 1")
        self._pseudonym_key = _derive(secret, "pseudonym")
        self._resource_key = _derive(secret, "resource-id")
        self._date_key = _derive(secret, "date-shift")
        self._token_key = _derive(secret, "leak-token")
        self._max_days = date_shift_max_days
        # A patient's identifiers are tokenised again with every message of theirs (and a
        # feed's words in every event): their hashes are kept, up to _TOKEN_CACHE of them.
        self._tokens: dict[str, str] = {}

    @property
    def date_shift_max_days(self) -> int:
        return self._max_days

    def pseudonym(self, authority: str, value: str) -> str:
        """The patient's pseudonym: the same (authority, value) always gives the same id."""
        value = normalise_value(value)
        if not value:
            # Every patient without an identifier would otherwise share one pseudonym.
            raise DeidError("cannot pseudonymise an empty identifier value")
        return _mac(self._pseudonym_key, normalise_authority(authority), value).hex()[:_ID_HEX_CHARS]

    def date_shift_days(self, pseudonym: str) -> int:
        """A per-patient offset in [-N, N] without 0 (0 would leave real dates in place)."""
        n = self._max_days
        draw = int.from_bytes(_mac(self._date_key, pseudonym)[:8], "big") % (2 * n)
        return draw - n if draw < n else draw - n + 1

    def resource_id(self, pseudonym: str | None, resource_type: str, source_id: str) -> str:
        """A keyed id for a non-Patient resource; scoped by patient so ids never link patients."""
        if not source_id:
            raise DeidError(f"{resource_type} has no id to derive a pseudonymous id from")
        return _mac(self._resource_key, pseudonym or "", resource_type, source_id).hex()[:_ID_HEX_CHARS]

    def token(self, normalised_text: str) -> str:
        """A keyed hash of one normalised identifier token, for the outgoing leak check:
        known identifiers are stored only as these, and payloads are compared as these."""
        found = self._tokens.get(normalised_text)
        if found is None:
            if len(self._tokens) >= _TOKEN_CACHE:
                self._tokens.clear()  # cheaper than an LRU, and refilled within a few batches
            found = _mac(self._token_key, normalised_text).hex()[:_ID_HEX_CHARS]
            self._tokens[normalised_text] = found
        return found

    def __repr__(self) -> str:
        return f"Vault(secret=<hidden>, date_shift_max_days={self._max_days})"

    def __reduce__(self) -> NoReturn:
        # Pickling would copy key material into task queues or caches.
        raise TypeError("Vault holds key material and cannot be pickled or copied")
