"""Subscriptions' HTTP side (R5 Backport IG for R4): create, read and end a rest-hook
Subscription, its ``$status`` and ``$events``; deliveries are ``sidecar.subscriptions``'."""

# No `from __future__ import annotations`: FastAPI reads route annotations at definition time.
import json
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

import audit
from core.db import Database
from core.tables import Subscription as SubscriptionRow
from sidecar.api_common import (
    FHIR_JSON,
    MAX_SEQ,
    SEARCH_PAGE,
    Caller,
    Problem,
    ResourceId,
    StoredTypes,
    fhir_base,
    fhir_response,
)
from sidecar.fhir_search import searchable_types
from sidecar.subscriptions import (
    SECRET_EXTENSION,
    Deliverer,
    SubscriptionError,
    create_subscription,
    events_of,
    status_bundle,
    topic_type,
    topics,
)

__all__ = ["subscription_router"]


def subscription_router(
    db: Database, deliverer: Deliverer | None, client: Callable[..., Caller], stored_types: StoredTypes
) -> APIRouter:
    router = APIRouter()
    Client = Annotated[Caller, Depends(client)]

    def topic_types() -> dict[str, str]:
        with db.reads() as session:
            return topics(searchable_types(stored_types.fresh(session)))

    def own_subscription(sid: str, who: Caller) -> SubscriptionRow:
        with db.reads() as session:
            sub = session.get(SubscriptionRow, sid)
            if sub is None or sub.client != who.actor or sub.status == "off":
                raise Problem(404, "not-found", "no such Subscription")
            session.expunge(sub)
            return sub

    @router.post("/fhir/Subscription")
    async def subscribe(request: Request, who: Client) -> JSONResponse:
        if deliverer is None:
            raise Problem(501, "not-supported", "subscriptions are not enabled on this server")
        try:
            resource = json.loads(await request.body())
        except ValueError:
            raise Problem(400, "structure", "the body is not JSON") from None
        topic = resource.get("criteria") if isinstance(resource, dict) else None
        rtype = topic_type(topic) if isinstance(topic, str) else None
        if not who.may(rtype or "DocumentReference", "r", population=True):
            raise HTTPException(403, "this client may not subscribe to events across patients of this type")
        base = fhir_base(request)
        try:
            stored, secret = create_subscription(
                db,
                resource,
                actor=who.actor,
                base_url=base,
                known_topics=topic_types(),
                settings=deliverer.settings,
            )
        except SubscriptionError as exc:
            raise Problem(400, "invalid", str(exc)) from None
        answer = stored | {"extension": [{"url": SECRET_EXTENSION, "valueString": secret}]}
        location = {"Location": f"{base}/Subscription/{stored['id']}"}
        return JSONResponse(answer, status_code=201, media_type=FHIR_JSON, headers=location)

    @router.get("/fhir/Subscription/{sid}")
    def subscription(sid: ResourceId, who: Client) -> JSONResponse:
        return fhir_response(json.loads(own_subscription(sid, who).body))

    @router.delete("/fhir/Subscription/{sid}")
    def unsubscribe(sid: ResourceId, who: Client) -> Response:
        own_subscription(sid, who)
        with db.transaction() as session:
            row = session.get(SubscriptionRow, sid)
            assert row is not None
            row.status = "off"
            audit.append(session, actor=who.actor, action="subscription.delete", entity=f"Subscription/{sid}")
        return Response(status_code=204)

    @router.get("/fhir/Subscription/{sid}/$status")
    def subscription_status(sid: ResourceId, who: Client) -> JSONResponse:
        return fhir_response(status_bundle(own_subscription(sid, who), "query-status"))

    @router.get("/fhir/Subscription/{sid}/$events")
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
        return fhir_response(status_bundle(sub, "query-event", events))

    return router
