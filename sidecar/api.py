"""The HTTP API: FHIR read and search over the de-identified store for subscribers, audit
search for auditors (``api_auditors``), and a status page.

Every response that carries patient data passes the outgoing leak guard first, like
every event (worker.relay) and every sandbox prompt (worker.screen): a resource in
which a known identifier of its patient is found is withheld (read: HTTP 451 with an
OperationOutcome naming only the kinds; search: left out of the Bundle, with an
OperationOutcome entry saying so), quarantined as a dead letter with the reason, and
audited. Every request is audited with the client's name as actor.

Clients authenticate with a bearer token from ``api_tokens``; without any token the API
refuses to start (no anonymous reads of clinical data, even on localhost).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# definition time, and the dependency aliases are local to create_api.
import hmac
import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.errors import ConfigError
from core.tables import AuditEntry, DeadLetter, Resource, ResourceHistory
from deid import Vault
from sidecar.stats import collect
from worker.leakguard import LeakGuard

log = logging.getLogger("sidecar.api")

FHIR_JSON = "application/fhir+json"
WITHHELD = 451  # Unavailable For Legal Reasons: withheld on purpose; clients must not retry
SEARCH_PAGE = 100
SEARCH_PAGE_MAX = 1000
_TYPE = r"^[A-Z][A-Za-z]{1,63}$"
_ID = r"^[A-Za-z0-9\-.]{1,64}$"

ResourceType = Annotated[str, Path(pattern=_TYPE)]
ResourceId = Annotated[str, Path(pattern=_ID)]


def outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


class _Problem(Exception):
    def __init__(self, status: int, code: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics


def create_api(
    db: Database,
    vault: Vault,
    tokens: dict[str, SecretStr],
    auditors: Sequence[str] = (),
    journal_file: FilePath | None = None,
) -> FastAPI:
    """``journal_file``: the listener's intake journal, counted in /status as `sidecar stats` does."""
    if not tokens:
        raise ConfigError("the HTTP API needs api_tokens: it serves no anonymous reads")
    if unknown := sorted(set(auditors) - set(tokens)):
        raise ConfigError(f"api_auditors names clients without a token: {', '.join(unknown)}")
    api = FastAPI(title="sidecar", docs_url=None, redoc_url=None, openapi_url=None)
    bearer = HTTPBearer(auto_error=False)

    def client(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        given = credentials.credentials.encode() if credentials is not None else b""
        # Compare with every token (constant time each), so timing tells nothing of which matched.
        names = [n for n, t in tokens.items() if hmac.compare_digest(given, t.get_secret_value().encode())]
        if credentials is None or not names:
            raise HTTPException(401, "missing or unknown bearer token", {"WWW-Authenticate": "Bearer"})
        return names[0]

    Client = Annotated[str, Depends(client)]

    @api.exception_handler(_Problem)
    def _problem(_request: Request, exc: _Problem) -> JSONResponse:
        return _fhir(outcome(exc.code, exc.diagnostics), exc.status)

    @api.exception_handler(RequestValidationError)
    def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        return _fhir(outcome("invalid", f"invalid request: {where}"), 400)

    @api.exception_handler(HTTPException)
    def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {401: "login", 403: "forbidden"}.get(exc.status_code, "processing")
        response = _fhir(outcome(code, str(exc.detail)), exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    def withhold(session: Session, actor: str, version: str, kinds: list[str], now: datetime) -> int:
        """Quarantine (one open dead letter per withheld resource version, however often it
        is asked for) and audit. ``version``: Type/id/_history/n."""
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

    def read_one(actor: str, action: str, rtype: str, rid: str, version: int | None) -> JSONResponse:
        now = datetime.now(UTC)
        what = f"{rtype}/{rid}" + (f"/_history/{version}" if version is not None else "")
        with db.transaction() as session:
            head = session.execute(
                select(Resource).where(Resource.resource_type == rtype, Resource.resource_id == rid)
            ).scalar_one_or_none()
            body: str | None = head.body if head is not None else None
            if head is not None and version is not None:
                body = session.execute(
                    select(ResourceHistory.body).where(
                        ResourceHistory.resource_type == rtype,
                        ResourceHistory.resource_id == rid,
                        ResourceHistory.version == version,
                    )
                ).scalar_one_or_none()
            if body is None or head is None:
                audit.append(
                    session, actor=actor, action=action, entity=what, outcome=audit.Outcome.FAILURE,
                    detail={"status": 404}, now=now,
                )  # fmt: skip
                return _fhir(outcome("not-found", f"{what} is not known"), 404)
            resource = json.loads(body)
            kinds = LeakGuard(vault).kinds_in(session, head.patient, resource) if head.patient else []
            if kinds:
                served = f"{rtype}/{rid}/_history/{version or head.version}"
                letter = withhold(session, actor, served, kinds, now)
                audit.append(
                    session, actor=actor, action=action, entity=what, outcome=audit.Outcome.FAILURE,
                    detail={"status": WITHHELD, "kinds": kinds}, now=now,
                )  # fmt: skip
                message = (
                    f"{what} is withheld: it carries identifier(s) of kind {', '.join(kinds)} "
                    f"(quarantined as dead letter {letter})"
                )
                return _fhir(outcome("security", message), WITHHELD)
            audit.append(session, actor=actor, action=action, entity=what, detail={"status": 200}, now=now)
        return _fhir(resource)

    @api.get("/fhir/{rtype}/{rid}")
    def read(rtype: ResourceType, rid: ResourceId, who: Client) -> JSONResponse:
        return read_one(f"api:{who}", "fhir.read", rtype, rid, None)

    @api.get("/fhir/{rtype}/{rid}/_history/{vid}")
    def vread(
        rtype: ResourceType, rid: ResourceId, vid: Annotated[int, Path(ge=1)], who: Client
    ) -> JSONResponse:
        return read_one(f"api:{who}", "fhir.vread", rtype, rid, vid)

    @api.get("/fhir/{rtype}")
    def search(
        request: Request,
        rtype: ResourceType,
        who: Client,
        patient: Annotated[str | None, Query(max_length=80)] = None,
        subject: Annotated[str | None, Query(max_length=80)] = None,
        count: Annotated[int, Query(alias="_count", ge=1, le=SEARCH_PAGE_MAX)] = SEARCH_PAGE,
        offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
    ) -> JSONResponse:
        actor, now = f"api:{who}", datetime.now(UTC)
        wanted = (patient or subject or "").removeprefix("Patient/")
        if not wanted:
            raise _Problem(400, "not-supported", "search needs patient=Patient/<id> (or subject=)")
        what = f"{rtype}?patient=Patient/{wanted}"
        base = str(request.base_url).rstrip("/") + "/fhir"
        with db.transaction() as session:
            rows = list(
                session.execute(
                    select(Resource.body)
                    .where(Resource.resource_type == rtype, Resource.patient == wanted)
                    .order_by(Resource.resource_id)
                    .offset(offset)
                    .limit(count + 1)  # one more tells whether a next page exists
                ).scalars()
            )
            more = len(rows) > count
            guard = LeakGuard(vault)
            entries: list[dict[str, Any]] = []
            withheld: list[str] = []
            for body in rows[:count]:
                resource = json.loads(body)
                ref = f"{rtype}/{resource['id']}"
                kinds = guard.kinds_in(session, wanted, resource)
                if kinds:
                    served = f"{ref}/_history/{resource.get('meta', {}).get('versionId', '?')}"
                    withhold(session, actor, served, kinds, now)
                    withheld.append(f"{ref} ({', '.join(kinds)})")
                    continue
                match = {"fullUrl": f"{base}/{ref}", "resource": resource, "search": {"mode": "match"}}
                entries.append(match)
            if withheld:
                note = outcome(
                    "security", "withheld, carrying identifier(s) of kind: " + "; ".join(withheld), "warning"
                )
                entries.append({"resource": note, "search": {"mode": "outcome"}})
            audit.append(
                session,
                actor=actor,
                action="fhir.search",
                entity=what,
                outcome=audit.Outcome.FAILURE if withheld else audit.Outcome.SUCCESS,
                detail={"status": 200, "matches": len(entries) - bool(withheld), "withheld": len(withheld)},
                now=now,
            )
        links = [{"relation": "self", "url": str(request.url)}]
        if more:
            links.append(
                {"relation": "next", "url": str(request.url.include_query_params(_offset=offset + count))}
            )
        # No "total": counting every match for one page is not worth a second query.
        bundle = {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
        return _fhir(bundle)

    @api.get("/audit")
    def audit_search(
        who: Client,
        since: Annotated[int, Query(ge=0, description="entries after this sequence number")] = 0,
        action: Annotated[str | None, Query(max_length=64)] = None,
        entity: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """For auditors: entries hold codes, counts and our own ids, never identifiers."""
        actor, allowed = f"api:{who}", who in auditors
        filters = {"since": since, "action": action, "entity": entity}
        with db.transaction() as session:
            rows: list[AuditEntry] = []
            if allowed:
                query = select(AuditEntry).where(AuditEntry.seq > since)
                if action:
                    query = query.where(AuditEntry.action == action)
                if entity:
                    query = query.where(AuditEntry.entity == entity)
                rows = list(session.execute(query.order_by(AuditEntry.seq).limit(limit)).scalars())
            entries = [
                {"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "outcome": e.outcome,
                 "entity": e.entity, "detail": json.loads(e.detail), "hash": e.hash}
                for e in rows
            ]  # fmt: skip
            audit.append(
                session,
                actor=actor,
                action="audit.search",
                entity="audit_log",
                outcome=audit.Outcome.SUCCESS if allowed else audit.Outcome.FAILURE,
                detail={**{k: v for k, v in filters.items() if v}, "returned": len(entries)},
            )
        if not allowed:
            raise HTTPException(403, "this client may not read the audit log")
        next_since = entries[-1]["seq"] if len(entries) == limit else None
        return JSONResponse({"entries": entries, "next_since": next_since})

    @api.get("/status")
    def status(who: Client) -> dict[str, Any]:
        counts = collect(db, journal_file)  # counts only: no patient data, nothing to screen
        with db.transaction() as session:
            audit.append(session, actor=f"api:{who}", action="status.read", entity="status")
        return counts

    return api


class ApiServer:
    """uvicorn on a thread of `sidecar serve`: one process, one shutdown, like the
    metrics endpoint. Port 0 picks a free port (see ``port``)."""

    def __init__(
        self,
        api: FastAPI,
        host: str,
        port: int,
        *,
        tls_cert_file: FilePath | None = None,
        tls_key_file: FilePath | None = None,
    ) -> None:
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ConfigError("HTTPS needs both api_tls_cert_file and api_tls_key_file")
        config = uvicorn.Config(
            api,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=tls_cert_file,
            ssl_keyfile=tls_key_file,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the HTTP API did not start (is api_port in use?)")
            time.sleep(0.01)

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
