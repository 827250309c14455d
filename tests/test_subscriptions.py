"""Rest-hook subscriptions (issue 20): a subscriber without AMQP, a real HTTP server here,
gets every Observation event of 1,000 ORU messages exactly once after de-duplication, in
each patient's order, every notification signed, across a restart of `sidecar serve` and
30 s in which the subscriber is down. The subscription is made with fhirpy, as a client
would; its $status and $events answer afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient
from pydantic import SecretStr
from sqlalchemy import select

from bench.e2e_messages import SEQ_CODE, is_adt, message
from core.tables import DeadLetter, OutboxEvent
from sidecar.subscriptions import SECRET_EXTENSION, TOPIC_PREFIX
from tests.deployments import Embedded, wait_for

TOKEN = "t0k3n-of-a-webhook-client"
ORUS = 1_000
DOWN_S = 30.0


class Subscriber:
    """An HTTP endpoint that checks each notification's signature and keeps what it got."""

    def __init__(self, port: int = 0) -> None:
        self.secret = ""
        self.bodies: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fields = dict(p.split("=", 1) for p in self.headers.get("X-Sidecar-Signature", "").split(","))
                expected = hmac.new(
                    owner.secret.encode(), f"{fields.get('t')}.".encode() + body, hashlib.sha256
                )
                if not hmac.compare_digest(expected.hexdigest(), fields.get("v1", "")):
                    with owner._lock:
                        owner.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                with owner._lock:
                    owner.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._handler = Handler
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def restart(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[int, str, dict[str, Any]]]:
        """(event number, focus, resource) of every event received, duplicates included."""
        out = []
        with self._lock:
            bodies = list(self.bodies)
        for bundle in bodies:
            status, *resources = [e["resource"] for e in bundle["entry"]]
            events = [p for p in status["parameter"] if p["name"] == "notification-event"]
            for event, resource in zip(events, resources, strict=True):
                parts = {p["name"]: p for p in event["part"]}
                focus = parts["focus"]["valueReference"]["reference"]
                assert focus.endswith(f"{resource['resourceType']}/{resource['id']}")
                out.append((int(parts["event-number"]["valueString"]), focus, resource))
        return out


def _settings(data_dir: Path, port: int) -> dict[str, Any]:
    return {
        "data_dir": data_dir,
        "subscription_endpoints": [f"http://127.0.0.1:{port}"],  # the only place notifications go
        "api_port": 0,
        "api_tokens": {"webhooks": SecretStr(TOKEN)},
        "api_population_clients": ["webhooks"],
        # Retried every 2 s at most, so it catches up soon; enough tries to outlast the outage.
        "subscription_backoff_max_s": 2.0,
        "subscription_max_attempts": 100,
    }


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    endpoint = Subscriber()
    yield endpoint
    endpoint.stop()


def _send(dep: Embedded, seqs: list[int]) -> None:
    dep.deliver(*[message(seq, "W", patient_count=25) for seq in seqs])


def test_a_rest_hook_subscriber_gets_every_observation_once_in_order_across_a_restart_and_an_outage(
    tmp_path: Path, subscriber: Subscriber
) -> None:
    settings = _settings(tmp_path / "data", subscriber.port)
    seqs = [s for s in range(ORUS * 2) if not is_adt(s)][:ORUS]
    dep = Embedded(settings["data_dir"], **{k: v for k, v in settings.items() if k != "data_dir"})
    dep.start()
    try:
        assert dep.app is not None and dep.app.api is not None
        base = f"http://127.0.0.1:{dep.app.api.port}/fhir"
        client = SyncFHIRClient(base, authorization=f"Bearer {TOKEN}")
        statement = client.execute("metadata", method="get")
        [offered] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
        topic = f"{TOPIC_PREFIX}Observation-changed"
        assert topic in {e["valueCanonical"] for e in offered["extension"]}
        made = client.resource(
            "Subscription",
            status="requested",
            reason="lab results for the model service",
            criteria=topic,
            channel={"type": "rest-hook", "endpoint": f"http://127.0.0.1:{subscriber.port}/hook",
                     "payload": "application/fhir+json"},
        )  # fmt: skip
        made.save()
        subscriber.secret = next(e["valueString"] for e in made["extension"] if e["url"] == SECRET_EXTENSION)
        sub_id = made.id
        _send(dep, seqs[:400])
        wait_for(lambda: len({f for _n, f, _r in subscriber.events()}) >= 4000, timeout=60)

        subscriber.stop()  # down: notifications fail and are retried
        down_at = time.monotonic()
        _send(dep, seqs[400:700])
    finally:
        dep.stop()
    # `sidecar serve` restarts on the same data directory while the subscriber is down.
    dep = Embedded(settings["data_dir"], **{k: v for k, v in settings.items() if k != "data_dir"})
    dep.start()
    try:
        assert dep.app is not None and dep.app.api is not None
        base = f"http://127.0.0.1:{dep.app.api.port}/fhir"
        _send(dep, seqs[700:])
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        status = httpx.get(
            f"{base}/Subscription/{sub_id}/$status", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        parameters = {p["name"]: p for p in status.json()["entry"][0]["resource"]["parameter"]}
        assert parameters["status"]["valueCode"] == "active" and "error" in parameters  # failing meanwhile
        subscriber.restart()

        with dep.db.sessions() as s:
            expected = {
                json.loads(body)["id"]
                for body in s.execute(
                    select(OutboxEvent.body).where(OutboxEvent.routing_key.like("fhir.Observation.%"))
                ).scalars()
            }
        assert len(expected) == ORUS * 10
        wait_for(lambda: len({f for _n, f, _r in subscriber.events()}) == len(expected), timeout=120)
        received = subscriber.events()
        assert subscriber.bad_signatures == 0
        focus = {f.split("/fhir/", 1)[1]: n for n, f, _r in received}
        # Exactly once after de-duplication: the same events, numbered 1..N without a gap.
        versions = {
            f"{r['resourceType']}/{r['id']}/_history/{r['meta']['versionId']}" for _n, _f, r in received
        }
        assert versions == expected
        assert sorted(set(focus.values())) == list(range(1, len(expected) + 1))
        # Each patient's results in the order their messages were sent.
        first_seen: dict[str, list[int]] = {}
        seen: set[str] = set()
        for _n, f, resource in received:
            if f in seen or SEQ_CODE not in json.dumps(resource["code"]):
                continue
            seen.add(f)
            first_seen.setdefault(resource["subject"]["reference"], []).append(
                int(resource["valueQuantity"]["value"])
            )
        assert len(first_seen) == 25 and sum(map(len, first_seen.values())) == ORUS
        assert all(order == sorted(order) for order in first_seen.values())

        auth = {"Authorization": f"Bearer {TOKEN}"}

        def counted() -> str:
            status = httpx.get(f"{base}/Subscription/{sub_id}/$status", headers=auth).json()
            parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
            return str(parameters["events-since-subscription-start"]["valueString"])

        wait_for(lambda: counted() == str(len(expected)), timeout=30)
        replay = httpx.get(
            f"{base}/Subscription/{sub_id}/$events",
            params={"eventsSinceNumber": 1, "eventsUntilNumber": 5},
            headers=auth,
        ).json()
        replayed = [
            p["part"][0]["valueString"]
            for p in replay["entry"][0]["resource"]["parameter"]
            if p["name"] == "notification-event"
        ]
        assert replayed == ["1", "2", "3", "4", "5"] and len(replay["entry"]) == 6
    finally:
        dep.stop()


def test_a_notification_that_never_arrives_is_dead_lettered_and_can_be_read_back(tmp_path: Path) -> None:
    gone = Subscriber()
    gone.stop()  # an endpoint nobody answers at
    settings = _settings(tmp_path / "data", gone.port) | {
        "subscription_max_attempts": 2,
        "subscription_backoff_max_s": 0.2,
    }
    dep = Embedded(settings.pop("data_dir"), **settings)
    dep.start()
    try:
        assert dep.app is not None and dep.app.api is not None
        base = f"http://127.0.0.1:{dep.app.api.port}/fhir"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        subscription: dict[str, Any] = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "test",
            "criteria": f"{TOPIC_PREFIX}DiagnosticReport-changed",
        }
        # Only under subscription_endpoints: not another host, nor a port that merely starts alike.
        for elsewhere in ("http://10.0.0.7/hook", f"http://127.0.0.1:{gone.port}0/"):
            channel = {"type": "rest-hook", "endpoint": elsewhere}
            refused = httpx.post(
                f"{base}/Subscription", headers=auth, json=subscription | {"channel": channel}
            )
            assert refused.status_code == 400 and "subscription_endpoints" in refused.text
        made = httpx.post(
            f"{base}/Subscription",
            headers=auth,
            json={
                "resourceType": "Subscription",
                "status": "requested",
                "reason": "test",
                "criteria": f"{TOPIC_PREFIX}DiagnosticReport-changed",
                "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{gone.port}/"},
            },
        )
        assert made.status_code == 201 and made.headers["Location"].endswith(made.json()["id"])
        sub_id = made.json()["id"]
        _send(dep, [0, 1])

        def missed() -> list[str]:
            with dep.db.sessions() as s:
                return list(
                    s.execute(select(DeadLetter.reason).where(DeadLetter.stage == "subscription")).scalars()
                )

        wait_for(lambda: bool(missed()), timeout=30)
        tries = "not delivered after 2 tries: ConnectError reaching the endpoint"
        assert missed() == [f"Subscription/{sub_id}: events 1-2 {tries}"]
        status = httpx.get(f"{base}/Subscription/{sub_id}/$status", headers=auth).json()
        texts = [
            p["valueCodeableConcept"]["text"]
            for p in status["entry"][0]["resource"]["parameter"]
            if p["name"] == "error"
        ]
        assert any("2 events were dead-lettered" in t for t in texts)
        back = httpx.get(
            f"{base}/Subscription/{sub_id}/$events", params={"eventsSinceNumber": 1}, headers=auth
        ).json()
        assert [e["resource"]["resourceType"] for e in back["entry"]] == [
            "Parameters",
            "DiagnosticReport",
            "DiagnosticReport",
        ]
        # Its owner ends it: then it is gone.
        assert httpx.delete(f"{base}/Subscription/{sub_id}", headers=auth).status_code == 204
        assert httpx.get(f"{base}/Subscription/{sub_id}", headers=auth).status_code == 404
    finally:
        dep.stop()
