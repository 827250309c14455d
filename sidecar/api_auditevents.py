"""``GET /fhir/AuditEvent``: the audit log as IHE BALP AuditEvents, searched as IHE ITI-81
(Retrieve ATNA Audit Event) does, for auditor clients only.

Parameters: ``patient`` (Patient/id or id: one AuditEvent per entry naming that patient, that
patient alone), ``date`` (repeatable, prefixes eq ne lt gt le ge sa eb), ``agent`` (a client
name or actor), ``action`` (C R U D E), ``subtype`` (restful interaction or ISO 21089 code),
``outcome`` (0 or 4), ``_sort`` (``date`` or ``-date``, default newest first) and ``_count``;
pages by ``_cursor``. Every request is itself audited.
"""

# No `from __future__ import annotations`: FastAPI reads route annotations at definition time.
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

import audit
from audit.auditevent import actions_of, auditevent
from audit.search import EntryFilter, find_entries
from core.db import Database
from core.search_index import date_range
from sidecar.api_common import Caller, Problem, fhir_base, fhir_response
from sidecar.fhir_search import page_size

__all__ = ["auditevent_router", "entry_filter"]

_PARAMS = {
    "patient",
    "date",
    "agent",
    "action",
    "subtype",
    "outcome",
    "_sort",
    "_count",
    "_cursor",
    "_format",
}


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _date_bounds(values: Sequence[str]) -> tuple[str | None, str | None]:
    """The half-open range of ``at`` that every ``date`` value allows (a point in time:
    eq is within the value's precision, ge/gt/sa and le/lt/eb bound one side)."""
    low: str | None = None
    high: str | None = None
    for value in values:
        prefix, text = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
        found = date_range(text)
        if found is None or prefix not in ("eq", "lt", "gt", "le", "ge", "sa", "eb"):
            raise Problem(400, "value", f"date: {value!r} is not a FHIR date with a known prefix")
        start, end = _iso(found[0]), _iso(found[1])
        if prefix in ("eq", "ge", "le"):
            low = max(low or start, start) if prefix != "le" else low
            high = min(high or end, end) if prefix != "ge" else high
        elif prefix in ("gt", "sa"):
            low = max(low or end, end)
        else:  # lt, eb
            high = min(high or start, start)
    return low, high


def entry_filter(params: list[tuple[str, str]], cursor: int | None) -> EntryFilter:
    """The log filter of an AuditEvent search's parameters (400 for what it cannot read)."""
    unknown = sorted({k for k, _ in params} - _PARAMS)
    if unknown:
        raise Problem(400, "not-supported", f"unknown parameter(s): {', '.join(unknown)}")
    one = dict(params)
    patient = one.get("patient", "").removeprefix("Patient/") or None
    agent = one.get("agent")
    actors = [agent, f"api:{agent}", f"smart:{agent}", f"operator:{agent}"] if agent else []
    action = one.get("action")
    if action is not None and action not in ("C", "R", "U", "D", "E"):
        raise Problem(400, "value", "action must be C, R, U, D or E")
    actions, not_actions = actions_of(action=action, subtype=one.get("subtype"))
    outcome = one.get("outcome")
    if outcome is not None and outcome not in ("0", "4", "8", "12"):
        raise Problem(400, "value", "outcome must be 0, 4, 8 or 12")
    sort = one.get("_sort", "-date")
    if sort not in ("date", "-date"):
        raise Problem(400, "not-supported", "_sort: date or -date")
    low, high = _date_bounds([v for k, v in params if k == "date"])
    return EntryFilter(
        patient=patient,
        actors=actors,
        actions=actions,
        not_actions=not_actions,
        outcomes=[] if outcome is None else ["success"] if outcome == "0" else ["failure"],
        at_from=low,
        at_before=high,
        after_seq=cursor,
        newest_first=sort == "-date",
    )


def auditevent_router(db: Database, client: Callable[..., Caller], auditors: Sequence[str]) -> APIRouter:
    router = APIRouter()
    Client = Annotated[Caller, Depends(client)]

    @router.get("/fhir/AuditEvent")
    def search(request: Request, who: Client) -> JSONResponse:
        allowed = who.grant is None and who.name in auditors
        params = request.query_params.multi_items()
        if not allowed:
            with db.transaction() as session:
                audit.append(
                    session, actor=who.actor, action="audit.search", entity="AuditEvent",
                    outcome=audit.Outcome.FAILURE, detail={"status": 403}, context=who.context,
                )  # fmt: skip
            raise HTTPException(403, "this client may not read the audit log")
        cursor_text = dict(params).get("_cursor")
        if cursor_text is not None and not cursor_text.isdigit():
            raise Problem(400, "value", "_cursor is not one this server made")
        found = entry_filter(params, int(cursor_text) if cursor_text else None)
        count = page_size(dict(params).get("_count", "100"), minimum=1)
        with db.transaction() as session:
            entries = find_entries(session, found, count + 1)
            more, entries = len(entries) > count, entries[:count]
            audit.append(
                session,
                actor=who.actor,
                action="audit.search",
                entity="AuditEvent",
                detail={"params": sorted({k for k, _ in params}), "returned": len(entries)},
                # The search names the patient it asked about: an auditor's look is an access too.
                patients=[found.patient] if found.patient and entries else [],
                context=who.context,
            )
        base = fhir_base(request)
        events = [auditevent(e, patient=found.patient) for e in entries]
        applied = [(k, v) for k, v in params if k != "_cursor"]
        links = [{"relation": "self", "url": f"{base}/AuditEvent?{urlencode(params)}"}]
        if more:
            links.append(
                {
                    "relation": "next",
                    "url": f"{base}/AuditEvent?{urlencode([*applied, ('_cursor', str(entries[-1].seq))])}",
                }
            )
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [
                {"fullUrl": f"{base}/AuditEvent/{e['id']}", "resource": e, "search": {"mode": "match"}}
                for e in events
            ],
        }
        return fhir_response(bundle)

    return router
