"""Bulk Data Access's HTTP side: ``$export`` kick-off at system, Patient and Group level,
the status URL (202 with X-Progress, then the manifest; DELETE cancels) and the files;
the exports themselves are ``sidecar.bulk_export``'s."""

# No `from __future__ import annotations`: FastAPI reads route annotations at definition time.
import json
from collections.abc import Callable
from datetime import UTC
from email.utils import format_datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import select

from core.db import Database
from core.tables import Resource
from sidecar.api_common import Caller, Problem, ResourceId, StoredTypes, fhir_base, fhir_response, outcome
from sidecar.bulk_export import BulkExporter, ExportRequest
from sidecar.bulk_export import manifest as bulk_manifest
from sidecar.fhir_search import instant_of, searchable_types

__all__ = ["bulk_router"]

_JOB = r"^[0-9a-f\-]{36}$"
_EXPORT_PARAMS = {"_outputFormat", "_since", "_type"}
_NDJSON = {"application/fhir+ndjson", "application/ndjson", "ndjson"}


def bulk_router(
    db: Database, exporter: BulkExporter | None, client: Callable[..., Caller], stored_types: StoredTypes
) -> APIRouter:
    router = APIRouter()
    Client = Annotated[Caller, Depends(client)]

    def kick_off(request: Request, who: Caller, level: str, group: str | None = None) -> Response:
        if "respond-async" not in request.headers.get("prefer", ""):
            raise Problem(400, "required", "$export needs the header Prefer: respond-async")
        if exporter is None:
            raise Problem(501, "not-supported", "bulk export is not enabled on this server")
        lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
        params = request.query_params
        if (unknown := sorted(set(params) - _EXPORT_PARAMS)) and not lenient:
            raise Problem(400, "not-supported", f"$export does not support: {', '.join(unknown)}")
        if params.get("_outputFormat", "ndjson") not in _NDJSON:
            raise Problem(400, "not-supported", "_outputFormat must be application/fhir+ndjson")
        since = None
        if "_since" in params:
            since = instant_of(params["_since"], "_since")
        with db.reads() as session:
            stored = stored_types.fresh(session)
            members: tuple[str, ...] = ()
            if group is not None:
                body = session.execute(
                    select(Resource.body).where(
                        Resource.resource_type == "Group", Resource.resource_id == group
                    )
                ).scalar_one_or_none()
                if body is None:
                    raise Problem(404, "not-found", "no such Group")
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
        base = fhir_base(request)
        return Response(status_code=202, headers={"Content-Location": f"{base}/bulkstatus/{job}"})

    @router.get("/fhir/$export")
    def export_system(request: Request, who: Client) -> Response:
        return kick_off(request, who, "system")

    @router.get("/fhir/Patient/$export")
    def export_patients(request: Request, who: Client) -> Response:
        return kick_off(request, who, "patient")

    @router.get("/fhir/Group/{gid}/$export")
    def export_group(request: Request, gid: ResourceId, who: Client) -> Response:
        return kick_off(request, who, "group", gid)

    @router.get("/fhir/bulkstatus/{job}")
    def export_status(request: Request, job: Annotated[str, Path(pattern=_JOB)], who: Client) -> Response:
        found = exporter.job(job, who.actor) if exporter is not None else None
        if found is None:
            return fhir_response(outcome("not-found", "no such export (or it expired)"), 404)
        if found.status in ("accepted", "running"):
            return Response(
                status_code=202, headers={"X-Progress": found.progress or "queued", "Retry-After": "1"}
            )
        if found.status == "failed":
            return fhir_response(outcome("exception", found.error or "the export failed"), 500)
        base = fhir_base(request)
        assert found.expires_at is not None
        expires = found.expires_at.replace(tzinfo=found.expires_at.tzinfo or UTC).astimezone(UTC)
        return JSONResponse(
            bulk_manifest(found, f"{base}/bulkfiles"),
            headers={"Expires": format_datetime(expires, usegmt=True)},
        )

    @router.delete("/fhir/bulkstatus/{job}")
    def export_cancel(job: Annotated[str, Path(pattern=_JOB)], who: Client) -> Response:
        if exporter is None or not exporter.cancel(job, who.actor):
            return fhir_response(outcome("not-found", "no such export"), 404)
        return Response(status_code=202)

    @router.get("/fhir/bulkfiles/{job}/{name}")
    def export_file(job: Annotated[str, Path(pattern=_JOB)], name: str, who: Client) -> Response:
        path = exporter.download(job, name, who.actor) if exporter is not None else None
        if path is None:
            return fhir_response(outcome("not-found", "no such file (or it expired)"), 404)
        return FileResponse(path, media_type="application/fhir+ndjson")

    return router
