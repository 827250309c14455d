"""The HTTP API, assembled: authentication (static bearer tokens from ``api_tokens``, or
SMART Backend Services tokens, ``sidecar.api_smart``), the FHIR routes (``sidecar.api_fhir``:
CapabilityStatement, read, search, $everything), Bulk Data export (``sidecar.api_bulk``),
rest-hook subscriptions (``sidecar.api_subscriptions``), audit search for auditors
(``api_auditors``) and a status page; ``ApiServer`` runs it on a thread of `sidecar serve`.

Every response that carries patient data passes the outgoing leak guard first, like
every event (worker.relay) and every sandbox prompt (worker.screen): a resource in
which a known identifier of its patient is found is withheld (read: HTTP 451 with an
OperationOutcome naming only the kinds; search: left out of the Bundle, with an
OperationOutcome entry saying so), quarantined as a dead letter with the reason, and
audited. Every request is audited with the client's name as actor; values a client sent
(search values, ids we do not hold) are recorded as keyed hashes, never as sent.

Without any static token the API refuses to start (no anonymous reads of clinical data,
even on localhost). Failed authentications are audited in aggregate and throttled per
source address, and a request that ends in a 5xx is audited too (sidecar.api_audit). The
listener caps connections and times out slow requests (sidecar.api_guard).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# definition time, and the dependency aliases are local to create_api.
import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path as FilePath
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sqlalchemy import select

import audit
from core.db import Database
from core.errors import ConfigError
from core.ratelimit import rate_limit
from core.settings import Settings
from core.tables import AuditEntry, AuditPatient
from deid import Vault
from sidecar.api_audit import AuthGuard, ErrorAudit, Redactor
from sidecar.api_auditevents import auditevent_router
from sidecar.api_auditor import auditor_router
from sidecar.api_bulk import bulk_router
from sidecar.api_common import (
    MAX_SEQ,
    Caller,
    Problem,
    StoredTypes,
    fhir_response,
    outcome,
    token_owner,
)
from sidecar.api_fhir import fhir_router
from sidecar.api_guard import ConnectionGate, ConnectionLimits, GateCollector, guarded_protocol, soft_fd_limit
from sidecar.api_smart import smart_router, token_endpoint
from sidecar.api_subscriptions import subscription_router
from sidecar.bulk_export import BulkExporter
from sidecar.loops import Loop
from sidecar.smart import TokenService
from sidecar.stats import StatusCounts
from sidecar.subscriptions import Deliverer, DeliverySettings

__all__ = ["ApiServer", "api_server", "create_api"]

log = logging.getLogger("sidecar.api")

DEFAULT_PURPOSE = "HOPERAT"  # HL7 v3 PurposeOfUse: healthcare operations
LOG_REPORT_S = 10.0  # how often counts of rate-limited log lines are told


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
    purposes: Mapping[str, str] | None = None,
) -> FastAPI:
    """``journal_file``: the listener's intake journal, counted in /status as `sidecar stats` does.
    ``auth``: throttling and audit of failed authentications (default: 10 per 5 minutes).
    ``population``: clients that may search without naming a patient. ``smart``: SMART
    Backend Services clients (POST /auth/token); ``token_url``: that endpoint's address as
    clients know it (default: this server's own). ``exporter``: runs bulk exports ($export;
    without it they are refused). ``deliverer``: sends rest-hook subscriptions' notifications
    (without it subscriptions are refused). ``purposes``: each client's purpose of use, recorded
    in its audit entries (default HOPERAT)."""
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
    status_counts = StatusCounts(db, journal_file)

    def purpose_of(name: str) -> str:
        return (purposes or {}).get(name, DEFAULT_PURPOSE)

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
        given = credentials.credentials if credentials is not None else ""
        if (name := token_owner(tokens, given)) is not None:
            caller = Caller(name, population=name in population, purpose=purpose_of(name), source=source)
            request.state.actor = caller.actor  # the actor of a 5xx's audit entry (api_audit.ErrorAudit)
            return caller
        grant = smart.grant_of(given) if smart is not None and given else None
        if credentials is None or grant is None:
            auth.failed(source, throttled=False)
            raise HTTPException(
                401, "missing, unknown or expired bearer token", {"WWW-Authenticate": "Bearer"}
            )
        caller = Caller(grant.client, grant, purpose=purpose_of(grant.client), source=source)
        request.state.actor = caller.actor
        return caller

    Client = Annotated[Caller, Depends(client)]

    stored_types = StoredTypes()
    # Before the read and search routes, whose paths would take theirs.
    api.include_router(smart_router(db, smart, token_url, auth, redactor))
    api.include_router(bulk_router(db, exporter, client, stored_types))
    api.include_router(subscription_router(db, deliverer, client, stored_types))

    @api.exception_handler(Problem)
    def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return fhir_response(outcome(exc.code, exc.diagnostics), exc.status)

    @api.exception_handler(RequestValidationError)
    def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        return fhir_response(outcome("invalid", f"invalid request: {where}"), 400)

    @api.exception_handler(HTTPException)
    def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {401: "login", 403: "forbidden", 429: "throttled"}.get(exc.status_code, "processing")
        response = fhir_response(outcome(code, str(exc.detail)), exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    smart_url = (lambda request: token_endpoint(request, token_url)) if smart and smart.enabled else None
    api.include_router(auditor_router(db, tokens, auditors, auth, redactor))
    api.include_router(auditevent_router(db, client, auditors))  # before /fhir/{rtype} takes its path
    api.include_router(
        fhir_router(
            db,
            vault,
            redactor,
            client,
            stored_types,
            exporter=exporter,
            deliverer=deliverer,
            smart_url=smart_url,
        )
    )

    @api.get("/audit")
    def audit_search(
        who: Client,
        since: Annotated[int, Query(ge=0, le=MAX_SEQ, description="entries after this sequence number")] = 0,
        action: Annotated[str | None, Query(max_length=64)] = None,
        entity: Annotated[str | None, Query(max_length=200)] = None,
        patient: Annotated[str | None, Query(max_length=72)] = None,
        by: Annotated[str | None, Query(alias="actor", max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        """For auditors: entries hold codes, counts and our own ids, never identifiers;
        ``patient`` (a pseudonym) and ``actor`` select by the log's indexes."""
        actor, allowed = who.actor, who.grant is None and who.name in auditors
        with db.transaction() as session:
            rows: list[AuditEntry] = []
            if allowed:
                query = select(AuditEntry).where(AuditEntry.seq > since)
                if action:
                    query = query.where(AuditEntry.action == action)
                if entity:
                    query = query.where(AuditEntry.entity == entity)
                if by:
                    query = query.where(AuditEntry.actor == by)
                if patient:
                    query = query.join(AuditPatient, AuditPatient.seq == AuditEntry.seq).where(
                        AuditPatient.patient == patient.removeprefix("Patient/")
                    )
                rows = list(session.execute(query.order_by(AuditEntry.seq).limit(limit)).scalars())
            entries = [
                {"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "outcome": e.outcome,
                 "entity": e.entity, "detail": json.loads(e.detail), "hash": e.hash}
                for e in rows
            ]  # fmt: skip
            # Filters that matched are values the log already holds; others are the client's.
            filters = {"since": since} | {
                k: v if rows else redactor.ref(v)
                for k, v in (("action", action), ("entity", entity), ("patient", patient), ("actor", by))
                if v
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
        counts = status_counts()  # counts only: no patient data, nothing to screen
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
        purposes=settings.api_purposes,
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
                endpoints=tuple(settings.subscription_endpoints),
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
