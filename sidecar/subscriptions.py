"""Topic-based subscriptions with the rest-hook channel, for clients that do not speak AMQP
(Subscriptions R5 Backport IG, R4 profile).

A client POSTs a Subscription whose ``criteria`` is one of ``TOPICS`` (a resource type's
creates and updates, or summaries written) and whose channel is a rest-hook endpoint. The
deliverer (a loop of the API process) reads the outbox after the subscription's cursor, in
outbox order, which is commit order and so each patient's order, and POSTs notification
Bundles (``history``, a SubscriptionStatus Parameters first, then the resources) of up to
``subscription_batch`` events. Delivery is at least once: the cursor moves only after a 2xx,
so a crash or a restart sends the last batch again (event numbers and ids let the receiver
drop what it has). A failed POST is retried with exponential back-off; after
``subscription_max_attempts`` the batch is dead-lettered with the reason, counted as missed,
and the subscription goes on. Events the leak guard blocked are never sent; events the relay
has not yet decided on are waited for, so none is skipped.

Each notification is signed: ``X-Sidecar-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`` with the subscription's secret, handed to the client once, when it creates
the subscription.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import httpx
from sqlalchemy import select

import audit
from core.db import Database
from core.tables import DeadLetter, OutboxEvent
from core.tables import Subscription as SubscriptionRow

__all__ = [
    "SECRET_EXTENSION",
    "TOPIC_PREFIX",
    "Deliverer",
    "DeliverySettings",
    "SubscriptionError",
    "create_subscription",
    "events_of",
    "routing_prefix",
    "sign",
    "status_bundle",
    "topics",
]

log = logging.getLogger("sidecar.subscriptions")

TOPIC_PREFIX = "urn:hl7-fhir-sidecar:SubscriptionTopic/"
SUMMARY_TOPIC = TOPIC_PREFIX + "summary-completed"
SECRET_EXTENSION = "urn:hl7-fhir-sidecar:StructureDefinition/subscription-signing-secret"
_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
_PAYLOADS = ("full-resource", "id-only", "empty")


class SubscriptionError(Exception):
    """A Subscription the server refuses, with why."""


def topics(types: Sequence[str]) -> dict[str, str]:
    """Topic canonical -> the outbox routing-key prefix it matches."""
    out = {f"{TOPIC_PREFIX}{t}-changed": f"fhir.{t}." for t in types}
    out[SUMMARY_TOPIC] = "summary."
    return out


def routing_prefix(topic: str) -> str:
    """The outbox routing keys a topic matches the start of."""
    rtype = topic_type(topic)
    return f"fhir.{rtype}." if rtype else "summary."


def topic_type(topic: str) -> str | None:
    """The resource type a resource topic is about (None: the summary topic)."""
    name = topic.removeprefix(TOPIC_PREFIX)
    return name.removesuffix("-changed") if name.endswith("-changed") else None


def create_subscription(
    db: Database,
    resource: dict[str, Any],
    *,
    actor: str,
    base_url: str,
    known_topics: dict[str, str],
    settings: DeliverySettings,
) -> tuple[dict[str, Any], str]:
    """Store a new subscription from the client's Subscription; answers it as stored and
    its signing secret (given once)."""
    if resource.get("resourceType") != "Subscription":
        raise SubscriptionError("the body must be a Subscription")
    topic = resource.get("criteria")
    if topic not in known_topics:
        raise SubscriptionError(
            f"criteria must be one of the topics in the CapabilityStatement, not {topic!r}"
        )
    if resource.get("_criteria"):
        raise SubscriptionError("filter criteria are not supported: subscribe to a whole topic")
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise SubscriptionError("channel.type must be rest-hook")
    endpoint = str(channel.get("endpoint") or "")
    if urlparse(endpoint).scheme not in ("http", "https") or not urlparse(endpoint).netloc:
        raise SubscriptionError("channel.endpoint must be an http(s) URL")
    if not settings.allows(endpoint):
        # Notifications leave the hospital's network only where its operators said they may.
        raise SubscriptionError("channel.endpoint is not under any of this server's subscription_endpoints")
    if channel.get("payload", "application/fhir+json") not in ("application/fhir+json", "application/json"):
        raise SubscriptionError("channel.payload must be application/fhir+json")
    content = next(
        (
            e.get("valueCode")
            for e in (channel.get("_payload") or {}).get("extension", [])
            if str(e.get("url", "")).endswith("backport-payload-content")
        ),
        "full-resource",
    )
    if content not in _PAYLOADS:
        raise SubscriptionError(f"payload content must be one of {', '.join(_PAYLOADS)}")
    headers = [h for h in channel.get("header") or [] if isinstance(h, str) and ":" in h]
    sub_id, secret, now = str(uuid.uuid4()), secrets.token_hex(32), datetime.now(UTC)
    stored = {k: v for k, v in resource.items() if k not in ("id", "meta", "text")}
    stored |= {"id": sub_id, "status": "active"}
    stored["channel"] = {k: v for k, v in channel.items() if k != "header"}  # headers may hold credentials
    with db.transaction() as session:
        cursor = session.execute(select(OutboxEvent.id).order_by(OutboxEvent.id.desc()).limit(1)).scalar()
        session.add(
            SubscriptionRow(
                id=sub_id,
                client=actor,
                topic=topic,
                endpoint=endpoint,
                headers=json.dumps(headers),
                secret=secret,
                payload=content,
                base_url=base_url,
                status="active",
                cursor=cursor or 0,  # events from now on
                start_cursor=cursor or 0,
                events=0,
                missed=0,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                body=json.dumps(stored),
            )
        )
        audit.append(session, actor=actor, action="subscription.create", entity=f"Subscription/{sub_id}",
                     detail={"topic": topic, "payload": content})  # fmt: skip
    return stored, secret


def events_of(db: Database, sub: SubscriptionRow, since: int, until: int) -> list[tuple[int, dict[str, Any]]]:
    """The subscription's events numbered ``since``..``until`` (``$events``): its topic's
    outbox events after its start that were published (blocked ones are never numbered)."""
    with db.reads() as session:
        bodies = session.execute(
            select(OutboxEvent.body)
            .where(
                OutboxEvent.id > sub.start_cursor,
                OutboxEvent.routing_key.startswith(routing_prefix(sub.topic), autoescape=True),
                OutboxEvent.blocked_at.is_(None),
                OutboxEvent.sent_at.is_not(None),
            )
            .order_by(OutboxEvent.id)
            .offset(since - 1)
            .limit(until - since + 1)
        ).scalars()
        return [(since + i, json.loads(body)) for i, body in enumerate(bodies)]


def sign(secret: str, body: bytes, at: int) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def status_bundle(
    sub: SubscriptionRow, kind: str, events: Sequence[tuple[int, dict[str, Any]]] = ()
) -> dict[str, Any]:
    """A notification Bundle: SubscriptionStatus (R4 Parameters) and, per event (its number,
    its outbox event), the resource as the subscription's payload content says."""
    sub_url = f"{sub.base_url}/Subscription/{sub.id}"
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": sub_url}},
        {"name": "topic", "valueCanonical": sub.topic},
        {"name": "status", "valueCode": "active" if sub.status != "off" else "off"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(sub.events + len(events))},
    ]
    if sub.last_error and sub.status == "error":
        parameters.append({"name": "error", "valueCodeableConcept": {"text": sub.last_error}})
    if sub.missed and kind == "query-status":
        missed = f"{sub.missed} events were dead-lettered after the last try (read them with $events)"
        parameters.append({"name": "error", "valueCodeableConcept": {"text": missed}})
    entries: list[dict[str, Any]] = []
    for number, event in events:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(number)},
            {"name": "timestamp", "valueInstant": event.get("time", "")},
        ]
        data = event.get("data")
        resource = data if isinstance(data, dict) and "resourceType" in data and "id" in data else None
        if resource and sub.payload != "empty":
            reference = f"{resource['resourceType']}/{resource['id']}"
            part.append({"name": "focus", "valueReference": {"reference": f"{sub.base_url}/{reference}"}})
            if sub.payload == "full-resource":
                entries.append(
                    {
                        "fullUrl": f"{sub.base_url}/{reference}",
                        "resource": resource,
                        "request": {"method": "PUT", "url": reference},
                        "response": {"status": "200"},
                    }
                )
        parameters.append({"name": "notification-event", "part": part})
    status = {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [f"{_BACKPORT}/backport-subscription-status-r4"]},
        "parameter": parameters,
    }
    head = {
        "fullUrl": f"urn:uuid:{status['id']}",
        "resource": status,
        "request": {"method": "GET", "url": f"{sub_url}/$status"},
        "response": {"status": "200"},
    }
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history" if kind == "event-notification" else "searchset",
        "timestamp": datetime.now(UTC).isoformat(),
        "entry": [head, *entries],
    }


@dataclass(frozen=True)
class DeliverySettings:
    batch: int = 100
    max_attempts: int = 12
    backoff_max_s: float = 30.0
    timeout_s: float = 10.0
    endpoints: tuple[str, ...] = ()  # URL prefixes an endpoint must start with (subscription_endpoints)

    def allows(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is under one of ``endpoints`` (a whole path segment: the prefix
        http://host:80 does not admit http://host:8080)."""
        return any(endpoint == p or endpoint.startswith(p.rstrip("/") + "/") for p in self.endpoints)


class Deliverer:
    """The rest-hook deliveries of every active subscription; ``run_round`` for a loop."""

    def __init__(self, db: Database, settings: DeliverySettings) -> None:
        self._db, self._settings = db, settings
        self._http = httpx.Client(timeout=settings.timeout_s, follow_redirects=False, trust_env=False)

    @property
    def settings(self) -> DeliverySettings:
        return self._settings

    def close(self) -> None:
        self._http.close()

    def run_round(self) -> int:
        now = datetime.now(UTC)
        with self._db.reads() as session:
            due = list(
                session.execute(
                    select(SubscriptionRow.id).where(
                        SubscriptionRow.status.in_(("active", "error")),
                        SubscriptionRow.next_attempt_at <= now,
                    )
                ).scalars()
            )
        return sum(self._deliver(sub_id) for sub_id in due)

    def _pending(self, sub: SubscriptionRow) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """The next events of the subscription's topic (numbered) and the outbox id it may
        move its cursor to: up to the first event the relay has not decided on yet."""
        prefix = routing_prefix(sub.topic)
        with self._db.reads() as session:
            rows = session.execute(
                select(
                    OutboxEvent.id,
                    OutboxEvent.routing_key,
                    OutboxEvent.body,
                    OutboxEvent.sent_at,
                    OutboxEvent.blocked_at,
                )
                .where(OutboxEvent.id > sub.cursor)
                .order_by(OutboxEvent.id)
                .limit(self._settings.batch * 20)
            ).all()
        events: list[tuple[int, dict[str, Any]]] = []
        cursor = sub.cursor
        for row_id, key, body, sent_at, blocked_at in rows:
            if sent_at is None and blocked_at is None:
                break  # not yet relayed (nor blocked): wait for it, in order
            if blocked_at is None and key.startswith(prefix):
                if len(events) == self._settings.batch:
                    break
                events.append((sub.events + len(events) + 1, json.loads(body)))
            cursor = row_id
        return events, cursor

    def _deliver(self, sub_id: str) -> int:
        with self._db.reads() as session:
            sub = session.get(SubscriptionRow, sub_id)
            if sub is None:
                return 0
            session.expunge(sub)
        events, cursor = self._pending(sub)
        if cursor == sub.cursor:
            return 0
        if not events:  # only other topics' events: move on without a POST
            with self._db.transaction() as session:
                row = session.get(SubscriptionRow, sub_id)
                if row is not None:
                    row.cursor = cursor
            return 1
        allowed = self._settings.allows(sub.endpoint)
        error = (
            self._post(sub, events) if allowed else "the endpoint is no longer under subscription_endpoints"
        )
        now = datetime.now(UTC)
        with self._db.transaction() as session:
            row = session.get(SubscriptionRow, sub_id)
            if row is None or row.cursor != sub.cursor:
                return 0  # deleted, or moved on meanwhile
            first, last = events[0][0], events[-1][0]
            if error is None:
                row.cursor, row.events, row.attempts = cursor, row.events + len(events), 0
                row.status, row.last_error, row.next_attempt_at = "active", None, now
                audit.append(session, actor=row.client, action="subscription.delivery",
                             entity=f"Subscription/{sub_id}", detail={"events": [first, last]})  # fmt: skip
                return 1
            row.attempts += 1
            row.status, row.last_error = "error", error
            if row.attempts < self._settings.max_attempts:
                wait = min(2.0 ** (row.attempts - 1), self._settings.backoff_max_s)
                row.next_attempt_at = now + timedelta(seconds=wait)
                log.warning(
                    "subscription delivery failed", extra={"subscription": sub_id, "attempts": row.attempts}
                )
                return 0
            tries = f"not delivered after {row.attempts} tries: {error}"
            reason = f"Subscription/{sub_id}: events {first}-{last} {tries}"
            session.add(
                DeadLetter(stage="subscription", code="delivery-failed", reason=reason, created_at=now)
            )
            audit.append(
                session,
                actor=row.client,
                action="subscription.missed",
                entity=f"Subscription/{sub_id}",
                outcome=audit.Outcome.FAILURE,
                detail={"events": [first, last]},
            )
            row.cursor, row.events, row.missed = cursor, row.events + len(events), row.missed + len(events)
            row.attempts, row.next_attempt_at = 0, now
            return 1

    def _post(self, sub: SubscriptionRow, events: list[tuple[int, dict[str, Any]]]) -> str | None:
        body = json.dumps(status_bundle(sub, "event-notification", events), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/fhir+json",
            "X-Sidecar-Signature": sign(sub.secret, body, int(time.time())),
        }
        for header in json.loads(sub.headers):
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        try:
            answer = self._http.post(sub.endpoint, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__} reaching the endpoint"
        return None if 200 <= answer.status_code < 300 else f"the endpoint answered {answer.status_code}"
