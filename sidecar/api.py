"""The HTTP API: FHIR read and search over the de-identified store for subscribers, audit
search for auditors (``api_auditors``), and a status page. Search is by patient (``patient=``
or ``subject=``), and a Provenance also by ``target=`` (Type/id: of any version of it;
Type/id/_history/n: of that version), which is how a summary's Provenance is found.

Every response that carries patient data passes the outgoing leak guard first, like
every event (worker.relay) and every sandbox prompt (worker.screen): a resource in
which a known identifier of its patient is found is withheld (read: HTTP 451 with an
OperationOutcome naming only the kinds; search: left out of the Bundle, with an
OperationOutcome entry saying so), quarantined as a dead letter with the reason, and
audited. Every request is audited with the client's name as actor; values a client sent
(search values, ids we do not hold) are recorded as keyed hashes, never as sent.

Clients authenticate with a bearer token from ``api_tokens``; without any token the API
refuses to start (no anonymous reads of clinical data, even on localhost). Failed
authentications are audited in aggregate and throttled per source address, and a request
that ends in a 5xx is audited too (sidecar.api_audit). The listener caps connections and
times out slow requests (sidecar.api_guard).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# definition time, and the dependency aliases are local to create_api.
import hmac
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path as FilePath
from typing import Annotated, Any, NamedTuple
from urllib.parse import parse_qs, urlencode

import jwt
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import false, func, or_, select, tuple_
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.errors import ConfigError
from core.ratelimit import rate_limit
from core.search_index import date_range, token_word
from core.settings import Settings
from core.tables import AuditEntry, Resource, ResourceHistory
from core.tables import Subscription as SubscriptionRow
from deid import Vault
from sidecar.api_audit import AuthGuard, ErrorAudit, Redactor
from sidecar.api_guard import ConnectionGate, ConnectionLimits, GateCollector, guarded_protocol, soft_fd_limit
from sidecar.api_screen import screen_rows, withhold
from sidecar.bulk_export import BulkExporter, ExportRequest
from sidecar.bulk_export import manifest as bulk_manifest
from sidecar.fhir_capability import capability_statement
from sidecar.fhir_search import SearchError, SearchPlan, parse_search, searchable_types, token_condition
from sidecar.loops import Loop
from sidecar.smart import ALGORITHMS, Grant, TokenError, TokenService
from sidecar.stats import collect
from sidecar.subscriptions import (
    SECRET_EXTENSION,
    Deliverer,
    DeliverySettings,
    SubscriptionError,
    create_subscription,
    events_of,
    status_bundle,
    topic_type,
    topics,
)
from worker.leakguard import LeakGuard

log = logging.getLogger("sidecar.api")

FHIR_JSON = "application/fhir+json"
WITHHELD = 451  # Unavailable For Legal Reasons: withheld on purpose; clients must not retry
SEARCH_PAGE = 100
SEARCH_PAGE_MAX = 1000
_TYPE = r"^[A-Z][A-Za-z]{1,63}$"
_ID = r"^[A-Za-z0-9\-.]{1,64}$"
_JOB = r"^[0-9a-f\-]{36}$"
# Numbers are bounded by the columns they are compared with (a larger one made the
# driver raise OverflowError: HTTP 500); the offset leaves room for its next link.
MAX_VERSION = 2**31 - 1  # resource_history.version is an INTEGER
MAX_SEQ = 2**63 - 1  # audit_log.seq is a BIGINT
MAX_OFFSET = MAX_SEQ - SEARCH_PAGE_MAX
LOG_REPORT_S = 10.0  # how often counts of rate-limited log lines are told

try:
    _VERSION = package_version("hl7-fhir-sidecar")
except PackageNotFoundError:  # run from a source tree that was not installed
    _VERSION = "0"

ResourceType = Annotated[str, Path(pattern=_TYPE)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: a static-token client (``grant`` None: every type, population access
    as ``api_population_clients`` says) or a SMART client with its token's scopes."""

    name: str
    grant: Grant | None = None
    population: bool = False

    @property
    def actor(self) -> str:
        return f"smart:{self.name}" if self.grant is not None else f"api:{self.name}"

    def may(self, rtype: str, permission: str, *, population: bool = False) -> bool:
        if self.grant is None:
            return self.population or not population
        return self.grant.allows(rtype, permission, population=population)


class _Row(NamedTuple):
    """A stored resource as the search code reads it."""

    resource_type: str
    resource_id: str
    patient: str | None
    body: str


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


_TARGET = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/([1-9][0-9]{0,9}))?$")


@dataclass(frozen=True)
class _Target:
    """A ``target=`` search value: Type/id, or Type/id/_history/n for that version only."""

    rtype: str
    rid: str
    version: str | None

    @property
    def text(self) -> str:
        return f"{self.rtype}/{self.rid}" + (f"/_history/{self.version}" if self.version else "")

    def matches(self, reference: object) -> bool:
        if not isinstance(reference, str):
            return False
        if self.version is not None:
            return reference == self.text
        return reference == self.text or reference.startswith(f"{self.text}/_history/")


def _claimed_client(assertion: str) -> str:
    """The iss an assertion names, unverified (for the audit entry of a refusal only)."""
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return ""
    issuer = claims.get("iss")
    return issuer if isinstance(issuer, str) else ""


def _aimed_at(rtype: str, target: str | None, patient: str) -> _Target | None:
    if target is None:
        return None
    if rtype != "Provenance":
        raise _Problem(400, "not-supported", "target= is searchable on Provenance only")
    if patient:
        raise _Problem(400, "not-supported", "search by target= or by patient=, not both")
    match = _TARGET.match(target)
    if match is None:
        raise _Problem(400, "value", "target must be Type/id or Type/id/_history/n")
    return _Target(match.group(1), match.group(2), match.group(3))


def create_api(
    db: Database,
    vault: Vault,
    tokens: dict[str, SecretStr],
    auditors: Sequence[str] = (),
    journal_file: FilePath | None = None,
    *,
    auth: AuthGuard | None = None,
    population: Sequence[str] = (),
    smart: TokenService | None = None,
    token_url: str | None = None,
    exporter: BulkExporter | None = None,
    deliverer: Deliverer | None = None,
) -> FastAPI:
    """``journal_file``: the listener's intake journal, counted in /status as `sidecar stats` does.
    ``auth``: throttling and audit of failed authentications (default: 10 per 5 minutes).
    ``population``: clients that may search without naming a patient. ``smart``: SMART
    Backend Services clients (POST /auth/token); ``token_url``: that endpoint's address as
    clients know it (default: this server's own). ``exporter``: runs bulk exports ($export;
    without it they are refused). ``deliverer``: sends rest-hook subscriptions' notifications
    (without it subscriptions are refused)."""
    if not tokens:
        raise ConfigError("the HTTP API needs api_tokens: it serves no anonymous reads")
    if unknown := sorted(set(auditors) - set(tokens)):
        raise ConfigError(f"api_auditors names clients without a token: {', '.join(unknown)}")
    if unknown := sorted(set(population) - set(tokens)):
        raise ConfigError(f"api_population_clients names clients without a token: {', '.join(unknown)}")
    redactor = Redactor(vault)
    auth = auth or AuthGuard(db, redactor, max_failures=10, window_s=300.0, audit_interval_s=60.0)
    api = FastAPI(title="sidecar", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.auth, api.state.redactor = auth, redactor  # for ApiServer
    api.state.exporter, api.state.deliverer = exporter, deliverer
    api.add_middleware(ErrorAudit, db=db, body=lambda: outcome("exception", "internal error (audited)"))
    bearer = HTTPBearer(auto_error=False)

    def client(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Caller:
        source = request.client.host if request.client is not None else "unknown"
        if wait := auth.retry_after(source):
            # Refused before any token is compared: a guesser learns nothing more.
            auth.failed(source, throttled=True)
            raise HTTPException(
                429, "too many failed authentications from this address", {"Retry-After": str(wait)}
            )
        given = credentials.credentials.encode() if credentials is not None else b""
        # Compare with every token (constant time each), so timing tells nothing of which matched.
        names = [n for n, t in tokens.items() if hmac.compare_digest(given, t.get_secret_value().encode())]
        if names:
            request.state.client = names[0]  # the actor of a 5xx's audit entry (api_audit.ErrorAudit)
            return Caller(names[0], population=names[0] in population)
        grant = smart.grant_of(given.decode(errors="replace")) if smart is not None and given else None
        if credentials is None or grant is None:
            auth.failed(source, throttled=False)
            raise HTTPException(
                401, "missing, unknown or expired bearer token", {"WWW-Authenticate": "Bearer"}
            )
        request.state.client = f"smart:{grant.client}"
        return Caller(grant.client, grant)

    Client = Annotated[Caller, Depends(client)]

    def require(caller: Caller, rtype: str, permission: str, *, population: bool = False) -> None:
        if not caller.may(rtype, permission, population=population):
            what = {"r": "read", "s": "search"}[permission] + (" across patients" if population else "")
            raise HTTPException(403, f"this client's scopes do not let it {what} {rtype}")

    def token_endpoint(request: Request) -> str:
        return token_url or str(request.base_url).rstrip("/") + "/auth/token"

    @api.get("/.well-known/smart-configuration")
    def smart_configuration(request: Request) -> JSONResponse:
        """SMART's discovery document (no token, as the spec expects)."""
        if smart is None or not smart.enabled:
            raise HTTPException(404, "SMART Backend Services are not configured (smart_clients)")
        return JSONResponse(
            {
                "token_endpoint": token_endpoint(request),
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
                "scopes_supported": ["system/*.rs", "system/*.read", "patient/*.rs", "patient/*.read"],
                "capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"],
            }
        )

    @api.post("/auth/token")
    async def issue_token(request: Request) -> JSONResponse:
        """Client credentials with a signed JWT (SMART Backend Services); every answer audited."""
        source = request.client.host if request.client is not None else "unknown"
        if wait := auth.retry_after(source):
            auth.failed(source, throttled=True)
            raise HTTPException(
                429, "too many failed authentications from this address", {"Retry-After": str(wait)}
            )
        body = await request.body()
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")[:65536]).items()}
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        try:
            if smart is None or not smart.enabled:
                raise TokenError("invalid_client", "no SMART clients are configured", 401)
            name, answer = smart.issue(form, token_endpoint(request))
        except TokenError as exc:
            auth.failed(source, throttled=False)
            claimed = _claimed_client(form.get("client_assertion", ""))
            actor = (
                f"smart:{claimed if smart is not None and smart.knows(claimed) else redactor.ref(claimed)}"
            )
            with db.transaction() as session:
                audit.append(
                    session, actor=actor, action="auth.token", entity="/auth/token",
                    outcome=audit.Outcome.FAILURE, detail={"error": exc.error, "reason": exc.reason},
                )  # fmt: skip
            error = {"error": exc.error, "error_description": exc.reason}
            headers = no_store | ({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})
            return JSONResponse(error, status_code=exc.status, headers=headers)
        with db.transaction() as session:
            audit.append(
                session, actor=f"smart:{name}", action="auth.token", entity="/auth/token",
                detail={"scope": answer["scope"], "expires_in": answer["expires_in"]},
            )  # fmt: skip
        return JSONResponse(answer, headers=no_store)

    # Bulk Data: registered before the read and search routes, whose paths would take these.
    _EXPORT_PARAMS = {"_outputFormat", "_since", "_type"}
    _NDJSON = {"application/fhir+ndjson", "application/ndjson", "ndjson"}

    def kick_off(request: Request, who: Caller, level: str, group: str | None = None) -> Response:
        if "respond-async" not in request.headers.get("prefer", ""):
            raise _Problem(400, "required", "$export needs the header Prefer: respond-async")
        if exporter is None:
            raise _Problem(501, "not-supported", "bulk export is not enabled on this server")
        lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
        params = request.query_params
        if (unknown := sorted(set(params) - _EXPORT_PARAMS)) and not lenient:
            raise _Problem(400, "not-supported", f"$export does not support: {', '.join(unknown)}")
        if params.get("_outputFormat", "ndjson") not in _NDJSON:
            raise _Problem(400, "not-supported", "_outputFormat must be application/fhir+ndjson")
        since = None
        if "_since" in params:
            found = date_range(params["_since"])
            if found is None:
                raise _Problem(400, "value", "_since must be a FHIR instant")
            since = found[0]
        with db.reads() as session:
            stored = stored_types(session)
            members: tuple[str, ...] = ()
            if group is not None:
                body = session.execute(
                    select(Resource.body).where(
                        Resource.resource_type == "Group", Resource.resource_id == group
                    )
                ).scalar_one_or_none()
                if body is None:
                    raise _Problem(404, "not-found", "no such Group")
                references = [
                    m.get("entity", {}).get("reference", "") for m in json.loads(body).get("member", [])
                ]
                members = tuple(r.split("/", 1)[1] for r in references if r.startswith("Patient/"))
        asked = [t for v in params.getlist("_type") for t in v.split(",") if t]
        types = asked or [t for t in stored if who.may(t, "r", population=True)]
        if not types and not any(who.may(t, "r", population=True) for t in searchable_types(stored)):
            raise HTTPException(403, "this client may not export: it reads one patient at a time")
        if refused := [t for t in types if not who.may(t, "r", population=True)]:
            raise HTTPException(403, f"this client may not export {', '.join(sorted(set(refused)))}")
        job = exporter.kick_off(
            ExportRequest(who.actor, level, sorted(set(types)), since, str(request.url), group, members)
        )
        base = str(request.base_url).rstrip("/") + "/fhir"
        return Response(status_code=202, headers={"Content-Location": f"{base}/bulkstatus/{job}"})

    @api.get("/fhir/$export")
    def export_system(request: Request, who: Client) -> Response:
        return kick_off(request, who, "system")

    @api.get("/fhir/Patient/$export")
    def export_patients(request: Request, who: Client) -> Response:
        return kick_off(request, who, "patient")

    @api.get("/fhir/Group/{gid}/$export")
    def export_group(request: Request, gid: ResourceId, who: Client) -> Response:
        return kick_off(request, who, "group", gid)

    @api.get("/fhir/bulkstatus/{job}")
    def export_status(request: Request, job: Annotated[str, Path(pattern=_JOB)], who: Client) -> Response:
        found = exporter.job(job, who.actor) if exporter is not None else None
        if found is None:
            return _fhir(outcome("not-found", "no such export (or it expired)"), 404)
        if found.status in ("accepted", "running"):
            return Response(
                status_code=202, headers={"X-Progress": found.progress or "queued", "Retry-After": "1"}
            )
        if found.status == "failed":
            return _fhir(outcome("exception", found.error or "the export failed"), 500)
        base = str(request.base_url).rstrip("/") + "/fhir"
        assert found.expires_at is not None
        expires = found.expires_at.replace(tzinfo=found.expires_at.tzinfo or UTC)
        return JSONResponse(
            bulk_manifest(found, f"{base}/bulkfiles"),
            headers={"Expires": format_datetime(expires, usegmt=True)},
        )

    @api.delete("/fhir/bulkstatus/{job}")
    def export_cancel(job: Annotated[str, Path(pattern=_JOB)], who: Client) -> Response:
        if exporter is None or not exporter.cancel(job, who.actor):
            return _fhir(outcome("not-found", "no such export"), 404)
        return Response(status_code=202)

    @api.get("/fhir/bulkfiles/{job}/{name}")
    def export_file(job: Annotated[str, Path(pattern=_JOB)], name: str, who: Client) -> Response:
        path = exporter.download(job, name, who.actor) if exporter is not None else None
        if path is None:
            return _fhir(outcome("not-found", "no such file (or it expired)"), 404)
        return FileResponse(path, media_type="application/fhir+ndjson")

    def topic_types() -> dict[str, str]:
        with db.reads() as session:
            return topics(searchable_types(stored_types(session)))

    def own_subscription(sid: str, who: Caller) -> SubscriptionRow:
        with db.reads() as session:
            sub = session.get(SubscriptionRow, sid)
            if sub is None or sub.client != who.actor or sub.status == "off":
                raise _Problem(404, "not-found", "no such Subscription")
            session.expunge(sub)
            return sub

    @api.post("/fhir/Subscription")
    async def subscribe(request: Request, who: Client) -> JSONResponse:
        if deliverer is None:
            raise _Problem(501, "not-supported", "subscriptions are not enabled on this server")
        try:
            resource = json.loads(await request.body())
        except ValueError:
            raise _Problem(400, "structure", "the body is not JSON") from None
        topic = resource.get("criteria") if isinstance(resource, dict) else None
        rtype = topic_type(topic) if isinstance(topic, str) else None
        if not who.may(rtype or "DocumentReference", "r", population=True):
            raise HTTPException(403, "this client may not subscribe to events across patients of this type")
        base = str(request.base_url).rstrip("/") + "/fhir"
        try:
            stored, secret = create_subscription(
                db, resource, actor=who.actor, base_url=base, known_topics=topic_types()
            )
        except SubscriptionError as exc:
            raise _Problem(400, "invalid", str(exc)) from None
        answer = stored | {"extension": [{"url": SECRET_EXTENSION, "valueString": secret}]}
        location = {"Location": f"{base}/Subscription/{stored['id']}"}
        return JSONResponse(answer, status_code=201, media_type=FHIR_JSON, headers=location)

    @api.get("/fhir/Subscription/{sid}")
    def subscription(sid: ResourceId, who: Client) -> JSONResponse:
        return _fhir(json.loads(own_subscription(sid, who).body))

    @api.delete("/fhir/Subscription/{sid}")
    def unsubscribe(sid: ResourceId, who: Client) -> Response:
        own_subscription(sid, who)
        with db.transaction() as session:
            row = session.get(SubscriptionRow, sid)
            assert row is not None
            row.status = "off"
            audit.append(session, actor=who.actor, action="subscription.delete", entity=f"Subscription/{sid}")
        return Response(status_code=204)

    @api.get("/fhir/Subscription/{sid}/$status")
    def subscription_status(sid: ResourceId, who: Client) -> JSONResponse:
        return _fhir(status_bundle(own_subscription(sid, who), "query-status"))

    @api.get("/fhir/Subscription/{sid}/$events")
    def subscription_events(
        sid: ResourceId,
        who: Client,
        since: Annotated[int, Query(alias="eventsSinceNumber", ge=1, le=MAX_SEQ)] = 1,
        until: Annotated[int | None, Query(alias="eventsUntilNumber", ge=1, le=MAX_SEQ)] = None,
    ) -> JSONResponse:
        """Events by number, delivered or missed: how a client fills a gap it noticed."""
        sub = own_subscription(sid, who)
        last = min(until or sub.events, since + SEARCH_PAGE - 1)
        events = events_of(db, sub, since, last) if last >= since else []
        with db.transaction() as session:
            audit.append(session, actor=who.actor, action="subscription.events", entity=f"Subscription/{sid}",
                         detail={"events": [since, last], "returned": len(events)})  # fmt: skip
        return _fhir(status_bundle(sub, "query-event", events))

    @api.exception_handler(_Problem)
    def _problem(_request: Request, exc: _Problem) -> JSONResponse:
        return _fhir(outcome(exc.code, exc.diagnostics), exc.status)

    @api.exception_handler(RequestValidationError)
    def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        return _fhir(outcome("invalid", f"invalid request: {where}"), 400)

    @api.exception_handler(HTTPException)
    def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {401: "login", 403: "forbidden", 429: "throttled"}.get(exc.status_code, "processing")
        response = _fhir(outcome(code, str(exc.detail)), exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    def unknown_ref(session: Session, rtype: str, rid: str) -> str:
        stored = select(Resource.resource_id).where(Resource.resource_type == rtype).limit(1)
        if session.execute(stored).first() is not None:
            return f"{rtype}/{redactor.ref(rid)}"
        return redactor.ref(f"{rtype}/{rid}")

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
                # Not ours: the id (and a type we do not store) may be anything, an MRN too.
                recorded = what if head is not None else unknown_ref(session, rtype, rid)
                audit.append(
                    session, actor=actor, action=action, entity=recorded, outcome=audit.Outcome.FAILURE,
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
        require(who, rtype, "r")
        return read_one(who.actor, "fhir.read", rtype, rid, None)

    @api.get("/fhir/{rtype}/{rid}/_history/{vid}")
    def vread(
        rtype: ResourceType, rid: ResourceId, vid: Annotated[int, Path(ge=1, le=MAX_VERSION)], who: Client
    ) -> JSONResponse:
        require(who, rtype, "r")
        return read_one(who.actor, "fhir.vread", rtype, rid, vid)

    def provenances_of(session: Session, aimed: _Target) -> tuple[bool, str | None, list[str]]:
        """Whether the target is held, its patient, and the bodies (by id) of the Provenances
        whose target is ``aimed`` (any version of it when it names none). A Provenance is
        stored under its target's patient: only those rows are read, and a match of the
        JSON text is confirmed on the parsed target."""
        head = session.execute(
            select(Resource.patient).where(
                Resource.resource_type == aimed.rtype, Resource.resource_id == aimed.rid
            )
        ).first()
        if head is None:
            return False, None, []
        owner: str | None = head[0]
        query = select(Resource.body).where(
            Resource.resource_type == "Provenance",
            Resource.patient == owner if owner is not None else Resource.patient.is_(None),
            Resource.body.contains(f'"reference":"{aimed.rtype}/{aimed.rid}', autoescape=True),
        )
        bodies = []
        for body in session.execute(query.order_by(Resource.resource_id)).scalars():
            targets = json.loads(body).get("target") or []
            if any(aimed.matches(t.get("reference")) for t in targets if isinstance(t, dict)):
                bodies.append(body)
        return True, owner, bodies

    types_seen: dict[str, Any] = {"at": 0.0, "types": []}

    def stored_types(session: Session) -> list[str]:
        """The types the store holds (remembered a minute: it only grows)."""
        if time.monotonic() - types_seen["at"] > 60.0:
            types_seen["types"] = sorted(session.execute(select(Resource.resource_type).distinct()).scalars())
            types_seen["at"] = time.monotonic()
        return list(types_seen["types"])

    @api.get("/fhir/metadata")
    def metadata(request: Request) -> JSONResponse:
        # No token, as the spec expects: it describes the server and holds no data.
        with db.reads() as session:
            types = stored_types(session)
        base = str(request.base_url).rstrip("/") + "/fhir"
        now = datetime.now(UTC).isoformat(timespec="seconds")
        smart_url = token_endpoint(request) if smart is not None and smart.enabled else None
        return _fhir(
            capability_statement(
                base,
                types,
                version=_VERSION,
                date=now,
                token_url=smart_url,
                bulk=exporter is not None,
                subscription_topics=sorted(topics(searchable_types(types))) if deliverer is not None else (),
            )
        )

    def served(
        session: Session, actor: str, rows: Sequence[Any], now: datetime, withheld: list[str]
    ) -> list[dict[str, Any]]:
        return screen_rows(session, vault, actor, rows, now, withheld)

    def searchset(
        base: str,
        matches: list[dict[str, Any]],
        included: list[dict[str, Any]],
        withheld: list[str],
        links: list[dict[str, str]],
        total: int | None,
    ) -> dict[str, Any]:
        def entry(resource: dict[str, Any], mode: str) -> dict[str, Any]:
            url = f"{base}/{resource['resourceType']}/{resource['id']}"
            return {"fullUrl": url, "resource": resource, "search": {"mode": mode}}

        entries = [entry(r, "match") for r in matches] + [entry(r, "include") for r in included]
        if withheld:
            note = outcome(
                "security", "withheld, carrying identifier(s) of kind: " + "; ".join(withheld), "warning"
            )
            entries.append({"resource": note, "search": {"mode": "outcome"}})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if total is not None:
            bundle["total"] = total
        return bundle | {"link": links, "entry": entries}

    _ROW = (Resource.resource_type, Resource.resource_id, Resource.patient, Resource.body)

    def included_rows(session: Session, plan: SearchPlan, rows: Sequence[Any]) -> tuple[list[Any], bool]:
        """The rows ``_include`` and ``_revinclude`` add to a page (at most SEARCH_PAGE_MAX;
        True when more were left out)."""
        keys: set[tuple[str, str]] = set()
        found: list[Any] = []
        dialect = db.engine.dialect.name
        for include in plan.includes:
            for row in rows:
                if include.parameter in ("patient", "subject"):
                    if row.patient:
                        keys.add(("Patient", row.patient))
                    continue
                for ref in json.loads(row.body).get(include.parameter) or []:
                    target = ref.get("reference", "") if isinstance(ref, dict) else ""
                    rtype, _, rid = target.partition("/")
                    if rtype and rid and "/" not in rid:
                        keys.add((rtype, rid))
        for rtype, rid in sorted(keys):
            found += session.execute(
                select(*_ROW).where(Resource.resource_type == rtype, Resource.resource_id == rid)
            ).all()
        for include in plan.revincludes:
            query = select(*_ROW).where(Resource.resource_type == include.source)
            if include.parameter == "patient":
                query = query.where(Resource.patient.in_([r.resource_id for r in rows]))
            else:
                words = [
                    token_word(include.parameter, None, f"{r.resource_type}/{r.resource_id}") for r in rows
                ]
                query = query.where(Resource.patient.in_({r.patient for r in rows if r.patient}))
                query = query.where(or_(false(), *[token_condition(dialect, w) for w in words]))
            found += session.execute(query.order_by(Resource.resource_id).limit(SEARCH_PAGE_MAX + 1)).all()
        seen = {(r.resource_type, r.resource_id) for r in rows}
        unique = []
        for row in found:
            if (row.resource_type, row.resource_id) not in seen:
                seen.add((row.resource_type, row.resource_id))
                unique.append(row)
        return unique[:SEARCH_PAGE_MAX], len(unique) > SEARCH_PAGE_MAX

    def searched_entity(session: Session, rtype: str, patients: list[str], found: bool) -> str:
        """The audit entity of a search: its type and patient, a value we do not hold as a hash."""
        if not patients:
            return f"{rtype}?population"
        known = (
            found
            or session.execute(
                select(Resource.resource_id).where(Resource.patient.in_(patients)).limit(1)
            ).first()
            is not None
        )
        shown = ",".join(patients) if known else redactor.ref(",".join(patients))
        return f"{rtype}?patient=Patient/{shown}"

    def page_links(
        request: Request, url: str, plan: SearchPlan, last: Sequence[Any] | None
    ) -> list[dict[str, str]]:
        query = urlencode(plan.applied)
        links = [{"relation": "self", "url": f"{url}?{query}" if query else url}]
        if last is not None:
            cursor = plan.cursor_after(last)
            links.append(
                {"relation": "next", "url": f"{url}?{urlencode([*plan.applied, ('_cursor', cursor)])}"}
            )
        return links

    @api.get("/fhir/{rtype}")
    def search(request: Request, rtype: ResourceType, who: Client) -> JSONResponse:
        actor, now = who.actor, datetime.now(UTC)
        require(who, rtype, "s")
        params = request.query_params.multi_items()
        if rtype == "Provenance" and any(k == "target" for k, _ in params):
            return provenance_search(request, actor, now, params)
        strict = "handling=strict" in request.headers.get("prefer", "").replace(" ", "")
        base = str(request.base_url).rstrip("/") + "/fhir"
        with db.transaction() as session:
            try:
                plan = parse_search(
                    rtype,
                    params,
                    dialect=db.engine.dialect.name,
                    strict=strict,
                    stored_types=stored_types(session),
                )
            except SearchError as exc:
                raise _Problem(exc.status, exc.code, exc.diagnostics) from None
            if not plan.patients and not who.may(rtype, "s", population=True):
                raise HTTPException(
                    403, "this client may search one patient at a time (patient= or subject=)"
                )
            total = None
            if plan.total or plan.summary_count:
                total = session.execute(
                    select(func.count()).select_from(Resource).where(*plan.where)
                ).scalar_one()
            rows: list[Any] = []
            if not plan.summary_count:
                keyset = plan.keyset()
                query = select(*_ROW, *[k.column for k in plan.sort]).where(*plan.where)
                if keyset is not None:
                    query = query.where(keyset)
                rows = list(session.execute(query.order_by(*plan.order_by()).limit(plan.count + 1)).all())
            more = len(rows) > plan.count
            rows = rows[: plan.count]
            extra, cut = included_rows(session, plan, rows) if rows else ([], False)
            extra = [r for r in extra if who.may(r.resource_type, "r")]
            withheld: list[str] = []
            matches = served(session, actor, rows, now, withheld)
            included = served(session, actor, extra, now, withheld)
            audit.append(
                session,
                actor=actor,
                action="fhir.search",
                entity=searched_entity(session, rtype, plan.patients, bool(rows)),
                outcome=audit.Outcome.FAILURE if withheld else audit.Outcome.SUCCESS,
                detail={
                    "status": 200, "matches": len(matches), "included": len(included),
                    "withheld": len(withheld), "params": sorted({k for k, _ in plan.applied}),
                },
                now=now,
            )  # fmt: skip
        last = rows[-1][len(_ROW) :] if more and rows else None
        bundle = searchset(
            base, matches, included, withheld, page_links(request, f"{base}/{rtype}", plan, last), total
        )
        if cut:
            bundle["entry"].append(
                {"resource": outcome("too-costly", f"includes cut at {SEARCH_PAGE_MAX}", "warning"),
                 "search": {"mode": "outcome"}}
            )  # fmt: skip
        return _fhir(bundle)

    def provenance_search(
        request: Request, actor: str, now: datetime, params: list[tuple[str, str]]
    ) -> JSONResponse:
        """``Provenance?target=``: how a summary's Provenance is found (every match, one page)."""
        target = next(v for k, v in params if k == "target")
        if len(target) > 200 or any(k not in ("target", "_count", "_format") for k, _ in params):
            raise _Problem(400, "not-supported", "search Provenance by target= alone")
        aimed = _aimed_at("Provenance", target, "")
        assert aimed is not None
        base = str(request.base_url).rstrip("/") + "/fhir"
        with db.transaction() as session:
            held, owner, bodies = provenances_of(session, aimed)
            rows = [_Row("Provenance", json.loads(b)["id"], owner, b) for b in bodies]
            withheld: list[str] = []
            matches = served(session, actor, rows, now, withheld)
            searched = f"Provenance?target={aimed.text if held else redactor.ref(aimed.text)}"
            audit.append(
                session,
                actor=actor,
                action="fhir.search",
                entity=searched,
                outcome=audit.Outcome.FAILURE if withheld else audit.Outcome.SUCCESS,
                detail={"status": 200, "matches": len(matches), "withheld": len(withheld)},
                now=now,
            )
        links = [{"relation": "self", "url": f"{base}/Provenance?{urlencode([('target', aimed.text)])}"}]
        return _fhir(searchset(base, matches, [], withheld, links, len(matches)))

    @api.get("/fhir/Patient/{rid}/$everything")
    def everything(request: Request, rid: ResourceId, who: Client) -> JSONResponse:
        """The patient's compartment as stored: the Patient and every resource stored under
        it; ``_since`` (updated at or after), ``_type`` (comma list), ``_count``, pages by
        keyset on (type, id)."""
        actor, now = who.actor, datetime.now(UTC)
        require(who, "Patient", "r")
        params = dict(request.query_params)
        base = str(request.base_url).rstrip("/") + "/fhir"
        where: list[Any] = [Resource.patient == rid]
        if who.grant is not None and (readable := who.grant.types()) is not None:
            where.append(Resource.resource_type.in_(sorted(readable)))
        applied: list[tuple[str, str]] = []
        if since := params.get("_since"):
            found = date_range(since)
            if found is None:
                raise _Problem(400, "value", "_since must be a FHIR instant")
            where.append(Resource.updated_at >= found[0])
            applied.append(("_since", since))
        if kinds := params.get("_type"):
            where.append(Resource.resource_type.in_(kinds.split(",")))
            applied.append(("_type", kinds))
        try:
            count = int(params.get("_count", SEARCH_PAGE))
        except ValueError:
            raise _Problem(400, "value", "_count must be a whole number") from None
        if not 1 <= count <= SEARCH_PAGE_MAX:
            raise _Problem(400, "value", f"_count must be 1..{SEARCH_PAGE_MAX}")
        applied.append(("_count", str(count)))
        after = params.get("_cursor", "").split("/", 1)
        with db.transaction() as session:
            head = session.execute(
                select(Resource.resource_id).where(
                    Resource.resource_type == "Patient", Resource.resource_id == rid
                )
            ).first()
            if head is None:
                audit.append(
                    session, actor=actor, action="fhir.everything", entity=f"Patient/{redactor.ref(rid)}",
                    outcome=audit.Outcome.FAILURE, detail={"status": 404}, now=now,
                )  # fmt: skip
                return _fhir(outcome("not-found", "no such Patient"), 404)
            total = session.execute(select(func.count()).select_from(Resource).where(*where)).scalar_one()
            query = select(*_ROW).where(*where)
            if len(after) == 2:
                query = query.where(tuple_(Resource.resource_type, Resource.resource_id) > tuple_(*after))
            order = (Resource.resource_type, Resource.resource_id)
            rows = list(session.execute(query.order_by(*order).limit(count + 1)).all())
            more, rows = len(rows) > count, rows[:count]
            withheld: list[str] = []
            matches = served(session, actor, rows, now, withheld)
            audit.append(
                session, actor=actor, action="fhir.everything", entity=f"Patient/{rid}",
                outcome=audit.Outcome.FAILURE if withheld else audit.Outcome.SUCCESS,
                detail={"status": 200, "matches": len(matches), "withheld": len(withheld)}, now=now,
            )  # fmt: skip
        url = f"{base}/Patient/{rid}/$everything"
        links = [{"relation": "self", "url": f"{url}?{urlencode(applied)}"}]
        if more:
            cursor = f"{rows[-1].resource_type}/{rows[-1].resource_id}"
            links.append({"relation": "next", "url": f"{url}?{urlencode([*applied, ('_cursor', cursor)])}"})
        return _fhir(searchset(base, matches, [], withheld, links, total))

    @api.get("/audit")
    def audit_search(
        who: Client,
        since: Annotated[int, Query(ge=0, le=MAX_SEQ, description="entries after this sequence number")] = 0,
        action: Annotated[str | None, Query(max_length=64)] = None,
        entity: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """For auditors: entries hold codes, counts and our own ids, never identifiers."""
        actor, allowed = who.actor, who.grant is None and who.name in auditors
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
            # Filters that matched are values the log already holds; others are the client's.
            filters = {"since": since} | {
                k: v if rows else redactor.ref(v) for k, v in (("action", action), ("entity", entity)) if v
            }
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
            audit.append(session, actor=who.actor, action="status.read", entity="status")
        return counts

    return api


def api_server(settings: Settings, db: Database, vault: Vault, journal_file: FilePath | None) -> "ApiServer":
    """The API as `sidecar serve` runs it, every limit from ``settings``; connection caps
    left unset are derived from the process's file-descriptor limit."""
    redactor = Redactor(vault)
    auth = AuthGuard(
        db,
        redactor,
        max_failures=settings.api_auth_max_failures,
        window_s=settings.api_auth_window_s,
        audit_interval_s=settings.api_auth_audit_interval_s,
    )
    smart = (
        TokenService(db, settings.smart_clients, lifetime_s=settings.smart_token_lifetime_s)
        if settings.smart_clients
        else None
    )
    api = create_api(
        db,
        vault,
        settings.api_tokens,
        settings.api_auditors,
        journal_file,
        auth=auth,
        population=settings.api_population_clients,
        smart=smart,
        token_url=settings.smart_token_url,
        exporter=BulkExporter(
            db, vault, settings.data_dir / "exports", retention_s=settings.export_retention_s
        ),
        deliverer=Deliverer(
            db,
            DeliverySettings(
                batch=settings.subscription_batch,
                max_attempts=settings.subscription_max_attempts,
                backoff_max_s=settings.subscription_backoff_max_s,
                timeout_s=settings.subscription_timeout_s,
            ),
        ),
    )
    limits = ConnectionLimits.derive(
        soft_fd_limit(),
        settings.api_max_connections,
        settings.api_max_connections_per_peer,
        settings.api_header_timeout_s,
    )
    return ApiServer(
        api,
        settings.api_host,
        settings.api_port or 0,
        tls_cert_file=settings.api_tls_cert_file,
        tls_key_file=settings.api_tls_key_file,
        limits=limits,
    )


class ApiServer:
    """uvicorn on a thread of `sidecar serve`: one process, one shutdown, like the
    metrics endpoint. Port 0 picks a free port (see ``port``).

    ``api`` comes from ``create_api``; its failed-authentication counts are flushed to the
    audit log from a loop here. Log lines an outsider can multiply (asyncio's accept
    errors, uvicorn's protocol warnings, refused connections) are rate-limited."""

    def __init__(
        self,
        api: FastAPI,
        host: str,
        port: int,
        *,
        tls_cert_file: FilePath | None = None,
        tls_key_file: FilePath | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ConfigError("HTTPS needs both api_tls_cert_file and api_tls_key_file")
        tls = _tls_context(tls_cert_file, tls_key_file) if tls_cert_file and tls_key_file else None
        limits = limits or ConnectionLimits.derive(soft_fd_limit(), None, None, 10.0)
        redactor: Redactor = api.state.redactor
        self.gate = ConnectionGate(limits, tls=tls, peer_ref=redactor.ref)
        config = uvicorn.Config(
            api,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=guarded_protocol(self.gate),
            backlog=limits.backlog,
        )
        self._limiters = [
            rate_limit(logging.getLogger(name))
            for name in ("asyncio", "uvicorn.error", "sidecar.api.connections", "sidecar.api.audit")
        ]
        self._auth: AuthGuard = api.state.auth
        self._reported = time.monotonic()
        self._housekeeping = Loop("api-housekeeping", self._housekeep, min(1.0, self._auth.audit_interval_s))
        self._housekeeping_started = False
        exporter: BulkExporter | None = api.state.exporter
        self._exports = Loop("api-export", exporter.run_round, 0.5) if exporter is not None else None
        self._deliverer: Deliverer | None = api.state.deliverer
        deliver = self._deliverer.run_round if self._deliverer is not None else None
        self._deliveries = Loop("api-subscriptions", deliver, 0.2) if deliver is not None else None
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)

    def _housekeep(self) -> int:
        self._auth.flush()
        if time.monotonic() - self._reported >= LOG_REPORT_S:
            self._reported = time.monotonic()
            for limiter in self._limiters:
                limiter.report(log)
        return 0

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("the HTTP API did not start (is api_port in use?)")
            time.sleep(0.01)
        self._housekeeping.start()
        self._housekeeping_started = True
        for loop in (self._exports, self._deliveries):
            if loop is not None:
                loop.start()

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def count_in(self, registry: CollectorRegistry) -> None:
        """Connections refused, timed out and open, in the metrics endpoint's registry."""
        registry.register(GateCollector(self.gate))

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._housekeeping_started:
            self._housekeeping.stop()
            for loop in (self._exports, self._deliveries):
                if loop is not None:
                    loop.stop()
        if self._deliverer is not None:
            self._deliverer.close()
        self._auth.flush(force=True)  # what the last interval counted is not lost


def _tls_context(cert: FilePath, key: FilePath) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"api_tls_cert_file / api_tls_key_file: {type(exc).__name__}: {exc}") from exc
    return context
