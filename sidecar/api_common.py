"""What the HTTP API's routes share: FHIR responses and errors, who is asking (``Caller``),
path patterns, and the stored types (remembered a minute)."""

# No `from __future__ import annotations`: FastAPI reads route annotations at definition time.
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from core.tables import Resource
from sidecar.fhir_search import PAGE_DEFAULT, PAGE_MAX, SearchError
from sidecar.smart import Grant

__all__ = [
    "FHIR_JSON",
    "MAX_SEQ",
    "SEARCH_PAGE",
    "SEARCH_PAGE_MAX",
    "Caller",
    "Problem",
    "ResourceId",
    "ResourceType",
    "StoredTypes",
    "fhir_base",
    "fhir_response",
    "outcome",
    "require",
    "returned",
    "token_owner",
]

FHIR_JSON = "application/fhir+json"
# Answered as an OperationOutcome with its status (create_api's handler); one class for
# search and the other routes, so a search error needs no translating.
Problem = SearchError
SEARCH_PAGE, SEARCH_PAGE_MAX = PAGE_DEFAULT, PAGE_MAX
MAX_SEQ = 2**63 - 1  # audit_log.seq is a BIGINT
ResourceType = Annotated[str, Path(pattern=r"^[A-Z][A-Za-z]{1,63}$")]
ResourceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]


def outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def fhir_response(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def fhir_base(request: Request) -> str:
    """The FHIR base URL as the client addressed this server."""
    return str(request.base_url).rstrip("/") + "/fhir"


@dataclass(frozen=True)
class Caller:
    """Who is asking: a static-token client (``grant`` None: every type, population access
    as ``api_population_clients`` says) or a SMART client with its token's scopes."""

    name: str
    grant: Grant | None = None
    population: bool = False
    purpose: str | None = None  # HL7 v3 PurposeOfUse, as configured for the client
    source: str | None = None  # the peer's address

    @property
    def context(self) -> audit.Context:
        return audit.Context(purpose=self.purpose, source=self.source)

    @property
    def actor(self) -> str:
        return f"smart:{self.name}" if self.grant is not None else f"api:{self.name}"

    def may(self, rtype: str, permission: str, *, population: bool = False) -> bool:
        """``permission``: r (read) or s (search); ``population``: across patients."""
        if self.grant is None:
            return self.population or not population
        return self.grant.allows(rtype, permission, population=population)


class StoredTypes:
    """The resource types the store holds, read again after a minute (the set only grows)."""

    def __init__(self) -> None:
        self._types: list[str] = []
        self._at = float("-inf")

    def __call__(self, session: Session) -> list[str]:
        """Good enough to describe the server (CapabilityStatement, topics, allowed includes)."""
        if time.monotonic() - self._at > 60.0:
            return self.fresh(session)
        return list(self._types)

    def fresh(self, session: Session) -> list[str]:
        """Read now: for what must not miss a type stored a moment ago (an export's types)."""
        self._types = sorted(session.execute(select(Resource.resource_type).distinct()).scalars())
        self._at = time.monotonic()
        return list(self._types)


def require(caller: Caller, rtype: str, permission: str, *, population: bool = False) -> None:
    """403 unless ``caller`` may read (r) or search (s) ``rtype`` (across patients)."""
    if not caller.may(rtype, permission, population=population):
        what = {"r": "read", "s": "search"}[permission] + (" across patients" if population else "")
        raise HTTPException(403, f"this client's scopes do not let it {what} {rtype}")


RETURNED_LISTED = 100  # up to this many references are listed; beyond, the count and hash


def returned(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """What an answer returned, for its audit entry: the versioned references (up to
    ``RETURNED_LISTED``), their count and the SHA-256 of them sorted, one per line, so that
    an auditor can check a claimed list against the entry."""
    refs = sorted(
        f"{r['resourceType']}/{r['id']}/_history/{r.get('meta', {}).get('versionId', '')}" for r in resources
    )
    out: dict[str, Any] = {"count": len(refs), "sha256": hashlib.sha256("\n".join(refs).encode()).hexdigest()}
    if len(refs) <= RETURNED_LISTED:
        out["refs"] = refs
    return out


def token_owner(tokens: Mapping[str, SecretStr], given: str) -> str | None:
    """The static-token client ``given`` belongs to. Compared with every token (constant time
    each), so timing tells nothing of which matched."""
    names = [
        n for n, t in tokens.items() if hmac.compare_digest(given.encode(), t.get_secret_value().encode())
    ]
    return names[0] if names else None
