"""The auditor page, ``/auditor/``: server-rendered (Jinja2) views of the audit log for the
clients named in ``api_auditors``: the overview (chain and checkpoint status, alerts,
per-client activity, re-identification requests with reasons, withheld output), a patient's
timeline, a client's activity, and CSV exports of both.

Sign-in takes an auditor client's name and token and gives a session cookie (HttpOnly,
SameSite=Strict, 8 hours, held in memory); a bearer token works too, for scripts. Every
sign-in, view and export is audited, refusals included.
"""

# No `from __future__ import annotations`: FastAPI reads route annotations at definition time.
import csv
import io
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import SecretStr

import audit
from core.db import Database
from sidecar.api_audit import AuthGuard, Redactor
from sidecar.api_common import token_owner
from sidecar.auditor_views import AlertRules, Row, dashboard, timeline

__all__ = ["SESSION_COOKIE", "auditor_router"]

SESSION_COOKIE = "sidecar_auditor"
SESSION_S = 8 * 3600
_MAX_SESSIONS = 1000


class _Sessions:
    def __init__(self) -> None:
        self._by_id: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def open(self, client: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._by_id = {k: v for k, v in self._by_id.items() if v[1] > now}
            if len(self._by_id) >= _MAX_SESSIONS:
                self._by_id.pop(next(iter(self._by_id)))
            self._by_id[sid] = (client, now + SESSION_S)
        return sid

    def client(self, sid: str | None) -> str | None:
        with self._lock:
            found = self._by_id.get(sid or "")
            return found[0] if found and found[1] > time.monotonic() else None

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


def auditor_router(
    db: Database,
    tokens: Mapping[str, SecretStr],
    auditors: Sequence[str],
    auth: AuthGuard,
    redactor: Redactor,
    rules: AlertRules | None = None,
) -> APIRouter:
    router = APIRouter()
    pages = Environment(loader=PackageLoader("sidecar", "templates/auditor"), autoescape=select_autoescape())
    sessions = _Sessions()
    alert_rules = rules or AlertRules()

    def source_of(request: Request) -> str:
        return request.client.host if request.client is not None else "unknown"

    def record(
        client: str,
        action: str,
        entity: str,
        request: Request,
        *,
        ok: bool = True,
        patients: Sequence[str] = (),
        **extra: object,
    ) -> None:
        with db.transaction() as session:
            audit.append(
                session,
                actor=f"api:{client}",
                action=action,
                entity=entity,
                outcome=audit.Outcome.SUCCESS if ok else audit.Outcome.FAILURE,
                detail=dict(extra),
                patients=patients,
                context=audit.Context(source=source_of(request)),
            )

    def auditor(request: Request) -> str:
        """The signed-in auditor; a redirect to sign-in, 401 or 403 otherwise."""
        client = sessions.client(request.cookies.get(SESSION_COOKIE))
        header = request.headers.get("authorization", "")
        if client is None and header.lower().startswith("bearer "):
            client = token_owner(tokens, header[7:].strip())
            if client is None:
                auth.failed(source_of(request), throttled=False)
                raise HTTPException(401, "unknown bearer token", {"WWW-Authenticate": "Bearer"})
        if client is None:
            raise HTTPException(303, "sign in first", {"Location": "/auditor/login"})
        if client not in auditors:
            record(client, "auditor.view", request.url.path, request, ok=False, status=403)
            raise HTTPException(403, "this client is not an auditor")
        return client

    def page(name: str, status: int = 200, **values: object) -> HTMLResponse:
        return HTMLResponse(pages.get_template(name).render(**values), status_code=status)

    @router.get("/auditor/login")
    def login_form() -> HTMLResponse:
        return page("login.html", error=None)

    @router.post("/auditor/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name, given = form.get("client", [""])[0], form.get("token", [""])[0]
        source = source_of(request)
        if auth.retry_after(source):
            auth.failed(source, throttled=True)
            return page("login.html", 429, error="Too many failed sign-ins from this address; wait.")
        owner = token_owner(tokens, given) if given else None
        if owner is None or owner != name:
            auth.failed(source, throttled=False)
            return page("login.html", 401, error="Unknown client or token.")
        if owner not in auditors:
            record(owner, "auditor.login", "auditor", request, ok=False, status=403)
            return page("login.html", 403, error="This client is not an auditor.")
        record(owner, "auditor.login", "auditor", request)
        response = RedirectResponse("/auditor/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.open(owner),
            max_age=SESSION_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/auditor",
        )
        return response

    @router.post("/auditor/logout")
    def logout(request: Request) -> Response:
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/auditor/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/auditor")
        return response

    @router.get("/auditor/")
    def overview(request: Request) -> HTMLResponse:
        client = auditor(request)
        with db.reads() as session:
            board = dashboard(session, alert_rules)
        record(client, "auditor.view", "auditor/overview", request, alerts=len(board.alerts))
        return page("overview.html", auditor=client, board=board)

    def patient_rows(request: Request, client: str, patient: str, action: str) -> list[Row]:
        with db.reads() as session:
            rows = timeline(session, patient=patient)
        # A value that names no entry may be anything an auditor typed, an MRN too: kept as a hash.
        entity = f"Patient/{patient}" if rows else f"Patient/{redactor.ref(patient)}"
        record(client, action, entity, request, returned=len(rows), patients=[patient] if rows else [])
        return rows

    Patient = Annotated[str, Query(alias="id", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]+$")]
    Client = Annotated[str, Query(alias="name", min_length=1, max_length=64)]

    @router.get("/auditor/patient")
    def patient_timeline(request: Request, patient: Patient) -> HTMLResponse:
        client = auditor(request)
        rows = patient_rows(request, client, patient, "auditor.view")
        csv_url = "/auditor/patient.csv?" + urlencode({"id": patient})
        return page("timeline.html", auditor=client, heading=f"Patient/{patient}", rows=rows, csv_url=csv_url)

    @router.get("/auditor/patient.csv")
    def patient_csv(request: Request, patient: Patient) -> Response:
        client = auditor(request)
        return _csv(patient_rows(request, client, patient, "auditor.export"), f"patient-{patient}")

    def client_rows(request: Request, client: str, actor: str, action: str) -> list[Row]:
        with db.reads() as session:
            rows = timeline(session, actor=actor)
        record(client, action, f"actor/{actor if rows else redactor.ref(actor)}", request, returned=len(rows))
        return rows

    @router.get("/auditor/client")
    def client_activity(request: Request, actor: Client) -> HTMLResponse:
        client = auditor(request)
        rows = client_rows(request, client, actor, "auditor.view")
        csv_url = "/auditor/client.csv?" + urlencode({"name": actor})
        return page(
            "timeline.html", auditor=client, heading=f"Activity of {actor}", rows=rows, csv_url=csv_url
        )

    @router.get("/auditor/client.csv")
    def client_csv(request: Request, actor: Client) -> Response:
        client = auditor(request)
        return _csv(client_rows(request, client, actor, "auditor.export"), f"client-{actor}")

    return router


def _csv(rows: list[Row], name: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(Row.CSV_HEADER)
    writer.writerows(r.csv() for r in rows)
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{safe}.csv"'},
    )
