"""The FHIR REST routes over the de-identified store: the CapabilityStatement, read, vread,
search (``sidecar.fhir_search``), ``Provenance?target=`` and ``Patient/$everything``. Every
response passes the leak guard (``sidecar.api_screen``) and every request is audited with
the client as actor; values a client sent that we do not hold are recorded as keyed hashes.
"""

# No `from __future__ import annotations`: FastAPI reads route annotations at definition time.
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy import false, func, or_, select, tuple_
from sqlalchemy.orm import Session

import audit
from core.db import Database
from core.search_index import token_word
from core.tables import Resource, ResourceHistory
from deid import Vault
from sidecar.api_audit import Redactor
from sidecar.api_common import (
    SEARCH_PAGE,
    SEARCH_PAGE_MAX,
    Caller,
    Problem,
    ResourceId,
    ResourceType,
    StoredTypes,
    fhir_response,
    outcome,
    require,
    returned,
)
from sidecar.api_screen import screen_rows, withhold
from sidecar.bulk_export import BulkExporter
from sidecar.fhir_capability import capability_statement
from sidecar.fhir_search import (
    SearchPlan,
    instant_of,
    page_size,
    parse_search,
    searchable_types,
    token_condition,
)
from sidecar.subscriptions import Deliverer, topics
from worker.leakguard import LeakGuard

__all__ = ["fhir_router"]

WITHHELD = 451  # Unavailable For Legal Reasons: withheld on purpose; clients must not retry
# A number is bounded by the column it is compared with (a larger one made the driver raise
# OverflowError: HTTP 500).
MAX_VERSION = 2**31 - 1  # resource_history.version is an INTEGER

try:
    _VERSION = package_version("hl7-fhir-sidecar")
except PackageNotFoundError:  # run from a source tree that was not installed
    _VERSION = "0"


class _Row(NamedTuple):
    """A stored resource as the search code reads it."""

    resource_type: str
    resource_id: str
    patient: str | None
    body: str


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


def _aimed_at(rtype: str, target: str | None, patient: str) -> _Target | None:
    if target is None:
        return None
    if rtype != "Provenance":
        raise Problem(400, "not-supported", "target= is searchable on Provenance only")
    if patient:
        raise Problem(400, "not-supported", "search by target= or by patient=, not both")
    match = _TARGET.match(target)
    if match is None:
        raise Problem(400, "value", "target must be Type/id or Type/id/_history/n")
    return _Target(match.group(1), match.group(2), match.group(3))


def fhir_router(
    db: Database,
    vault: Vault,
    redactor: Redactor,
    client: Callable[..., Caller],
    stored_types: StoredTypes,
    *,
    exporter: BulkExporter | None,
    deliverer: Deliverer | None,
    smart_url: Callable[[Request], str] | None,
) -> APIRouter:
    """``smart_url``: the SMART token endpoint for a request (None: SMART not configured),
    named in the CapabilityStatement like the $export operations and subscription topics."""
    router = APIRouter()
    Client = Annotated[Caller, Depends(client)]

    def unknown_ref(session: Session, rtype: str, rid: str) -> str:
        stored = select(Resource.resource_id).where(Resource.resource_type == rtype).limit(1)
        if session.execute(stored).first() is not None:
            return f"{rtype}/{redactor.ref(rid)}"
        return redactor.ref(f"{rtype}/{rid}")

    def read_one(who: Caller, action: str, rtype: str, rid: str, version: int | None) -> JSONResponse:
        actor, context, now = who.actor, who.context, datetime.now(UTC)
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
                    detail={"status": 404}, now=now, context=context,
                )  # fmt: skip
                return fhir_response(outcome("not-found", f"{what} is not known"), 404)
            resource = json.loads(body)
            patients = [head.patient] if head.patient else []
            kinds = LeakGuard(vault).kinds_in(session, head.patient, resource) if head.patient else []
            if kinds:
                served = f"{rtype}/{rid}/_history/{version or head.version}"
                letter = withhold(session, actor, served, kinds, now)
                audit.append(
                    session, actor=actor, action=action, entity=what, outcome=audit.Outcome.FAILURE,
                    detail={"status": WITHHELD, "kinds": kinds}, now=now, patients=patients, context=context,
                )  # fmt: skip
                message = (
                    f"{what} is withheld: it carries identifier(s) of kind {', '.join(kinds)} "
                    f"(quarantined as dead letter {letter})"
                )
                return fhir_response(outcome("security", message), WITHHELD)
            audit.append(
                session, actor=actor, action=action, entity=what, detail={"status": 200}, now=now,
                patients=patients, context=context,
            )  # fmt: skip
        return fhir_response(resource)

    @router.get("/fhir/{rtype}/{rid}")
    def read(rtype: ResourceType, rid: ResourceId, who: Client) -> JSONResponse:
        require(who, rtype, "r")
        return read_one(who, "fhir.read", rtype, rid, None)

    @router.get("/fhir/{rtype}/{rid}/_history/{vid}")
    def vread(
        rtype: ResourceType, rid: ResourceId, vid: Annotated[int, Path(ge=1, le=MAX_VERSION)], who: Client
    ) -> JSONResponse:
        require(who, rtype, "r")
        return read_one(who, "fhir.vread", rtype, rid, vid)

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

    @router.get("/fhir/metadata")
    def metadata(request: Request) -> JSONResponse:
        # No token, as the spec expects: it describes the server and holds no data.
        with db.reads() as session:
            types = stored_types(session)
        base = str(request.base_url).rstrip("/") + "/fhir"
        now = datetime.now(UTC).isoformat(timespec="seconds")
        token = smart_url(request) if smart_url is not None else None
        return fhir_response(
            capability_statement(
                base,
                types,
                version=_VERSION,
                date=now,
                token_url=token,
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

    def searched_entity(
        session: Session, rtype: str, patients: list[str], found: bool
    ) -> tuple[str, list[str]]:
        """The audit entity of a search (its type and patient, a value we do not hold as a
        hash) and the patients searched, when they are ours (a value we do not hold may be
        anything, an MRN too)."""
        if not patients:
            return f"{rtype}?population", []
        known = (
            found
            or session.execute(
                select(Resource.resource_id).where(Resource.patient.in_(patients)).limit(1)
            ).first()
            is not None
        )
        shown = ",".join(patients) if known else redactor.ref(",".join(patients))
        return f"{rtype}?patient=Patient/{shown}", patients if known else []

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

    @router.get("/fhir/{rtype}")
    def search(request: Request, rtype: ResourceType, who: Client) -> JSONResponse:
        actor, now = who.actor, datetime.now(UTC)
        require(who, rtype, "s")
        params = request.query_params.multi_items()
        if rtype == "Provenance" and any(k == "target" for k, _ in params):
            return provenance_search(request, who, now, params)
        strict = "handling=strict" in request.headers.get("prefer", "").replace(" ", "")
        base = str(request.base_url).rstrip("/") + "/fhir"
        with db.transaction() as session:
            plan = parse_search(
                rtype,
                params,
                dialect=db.engine.dialect.name,
                strict=strict,
                stored_types=stored_types(session),
            )
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
            entity, searched_for = searched_entity(session, rtype, plan.patients, bool(rows))
            audit.append(
                session,
                actor=actor,
                action="fhir.search",
                entity=entity,
                outcome=audit.Outcome.FAILURE if withheld else audit.Outcome.SUCCESS,
                detail={
                    "status": 200, "matches": len(matches), "included": len(included),
                    "withheld": len(withheld), "params": sorted({k for k, _ in plan.applied}),
                    "returned": returned([*matches, *included]),
                },
                now=now, patients=[*searched_for, *(r.patient for r in [*rows, *extra] if r.patient)],
                context=who.context,
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
        return fhir_response(bundle)

    def provenance_search(
        request: Request, who: Caller, now: datetime, params: list[tuple[str, str]]
    ) -> JSONResponse:
        """``Provenance?target=``: how a summary's Provenance is found (every match, one page)."""
        target = next(v for k, v in params if k == "target")
        if len(target) > 200 or any(k not in ("target", "_count", "_format") for k, _ in params):
            raise Problem(400, "not-supported", "search Provenance by target= alone")
        aimed = _aimed_at("Provenance", target, "")
        assert aimed is not None
        base = str(request.base_url).rstrip("/") + "/fhir"
        with db.transaction() as session:
            held, owner, bodies = provenances_of(session, aimed)
            rows = [_Row("Provenance", json.loads(b)["id"], owner, b) for b in bodies]
            withheld: list[str] = []
            matches = served(session, who.actor, rows, now, withheld)
            searched = f"Provenance?target={aimed.text if held else redactor.ref(aimed.text)}"
            audit.append(
                session,
                actor=who.actor,
                action="fhir.search",
                entity=searched,
                outcome=audit.Outcome.FAILURE if withheld else audit.Outcome.SUCCESS,
                detail={
                    "status": 200, "matches": len(matches), "withheld": len(withheld),
                    "returned": returned(matches),
                },
                now=now, patients=[owner] if owner and rows else [], context=who.context,
            )  # fmt: skip
        links = [{"relation": "self", "url": f"{base}/Provenance?{urlencode([('target', aimed.text)])}"}]
        return fhir_response(searchset(base, matches, [], withheld, links, len(matches)))

    @router.get("/fhir/Patient/{rid}/$everything")
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
            where.append(Resource.updated_at >= instant_of(since, "_since"))
            applied.append(("_since", since))
        if kinds := params.get("_type"):
            where.append(Resource.resource_type.in_(kinds.split(",")))
            applied.append(("_type", kinds))
        count = page_size(params.get("_count", str(SEARCH_PAGE)), minimum=1)
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
                    outcome=audit.Outcome.FAILURE, detail={"status": 404}, now=now, context=who.context,
                )  # fmt: skip
                return fhir_response(outcome("not-found", "no such Patient"), 404)
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
                detail={
                    "status": 200, "matches": len(matches), "withheld": len(withheld),
                    "returned": returned(matches),
                },
                now=now, patients=[rid], context=who.context,
            )  # fmt: skip
        url = f"{base}/Patient/{rid}/$everything"
        links = [{"relation": "self", "url": f"{url}?{urlencode(applied)}"}]
        if more:
            cursor = f"{rows[-1].resource_type}/{rows[-1].resource_id}"
            links.append({"relation": "next", "url": f"{url}?{urlencode([*applied, ('_cursor', cursor)])}"})
        return fhir_response(searchset(base, matches, [], withheld, links, total))

    return router
