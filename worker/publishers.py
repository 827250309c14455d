"""Where the outbox relay publishes: RabbitMQ (pika, publisher confirms) or an
in-process bus for the embedded default."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import pika
import pika.spec

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


@dataclass
class _Batch:
    outstanding: int
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def settle(self, error: str | None = None) -> None:
        if error and not self.error:
            self.error = error
        self.outstanding -= 1
        if self.outstanding <= 0 or error:
            self.done.set()


class RabbitPublisher:
    """Persistent messages to a durable topic exchange, with asynchronous publisher confirms.

    A pika SelectConnection runs on its own I/O thread. ``publish`` hands the whole batch
    to that thread, which publishes every message without waiting, and returns once the
    broker has confirmed each delivery tag (acks may cover several tags at once). pika's
    blocking channel waits for every confirm in turn instead (~1.5k msg/s measured here).
    A nack, a closed connection or a timeout fails the batch; the relay then leaves the
    outbox rows unsent and republishes them (consumers de-duplicate on the event id).
    """

    def __init__(self, url: str, exchange: str, *, confirm_timeout_s: float = 30.0) -> None:
        self._params = pika_parameters(url)
        self._exchange = exchange
        self._timeout = confirm_timeout_s
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failed: str | None = None
        self._next_tag = 0
        self._pending: dict[int, _Batch] = {}

    # -- called from the relay thread --------------------------------------------------

    def publish(self, events: Sequence[OutgoingEvent]) -> None:
        if not events:
            return
        with self._lock:
            self._ensure_connected()
            batch = _Batch(outstanding=len(events))
            self._conn.ioloop.add_callback_threadsafe(lambda: self._send(events, batch))
            if not batch.done.wait(self._timeout):
                self._shutdown()
                raise PublishError("broker did not confirm in time")
            if batch.error:
                self._shutdown()
                raise PublishError(f"broker did not confirm: {batch.error}")

    def close(self) -> None:
        with self._lock:
            self._shutdown()

    def _ensure_connected(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._ready.is_set():
            return
        self._shutdown()
        self._ready.clear()
        self._failed = None
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._params.socket_timeout or 10):
            self._shutdown()
            raise PublishError(f"broker unreachable: {self._failed or 'timeout'}")

    def _shutdown(self) -> None:
        conn, thread = self._conn, self._thread
        if conn is not None and thread is not None and thread.is_alive():
            with suppress(Exception):
                conn.ioloop.add_callback_threadsafe(self._close_from_loop)
            thread.join(5)
        self._conn = self._channel = self._thread = None
        self._ready.clear()

    # -- the I/O thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._conn = pika.SelectConnection(
                self._params,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
            self._conn.ioloop.start()
        except Exception as exc:
            self._failed = type(exc).__name__
            self._fail_pending("connection lost")

    def _on_open(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn: Any, error: BaseException) -> None:
        self._failed = type(error).__name__
        conn.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.exchange_declare(
            self._exchange, exchange_type="topic", durable=True, callback=self._on_declared
        )

    def _on_declared(self, _frame: Any) -> None:
        self._next_tag = 0
        self._channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _f: self._ready.set()
        )

    def _send(self, events: Sequence[OutgoingEvent], batch: _Batch) -> None:
        try:
            for event in events:
                self._channel.basic_publish(
                    exchange=self._exchange,
                    routing_key=event.routing_key,
                    body=event.body,
                    properties=pika.BasicProperties(
                        delivery_mode=pika.DeliveryMode.Persistent,
                        content_type="application/cloudevents+json",
                        message_id=event.event_id,
                    ),
                )
                self._next_tag += 1
                self._pending[self._next_tag] = batch
        except Exception as exc:
            batch.error = type(exc).__name__
            batch.done.set()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nacked = isinstance(method, pika.spec.Basic.Nack)
        # Tags go in in increasing order and dicts keep it: a multiple ack takes the head of
        # the queue (a scan of every pending tag per ack was quadratic in the batch).
        tags: list[int] = []
        if method.multiple:
            for t in self._pending:
                if t > method.delivery_tag:
                    break
                tags.append(t)
        else:
            tags.append(method.delivery_tag)
        for t in tags:
            batch = self._pending.pop(t, None)
            if batch is not None:
                batch.settle("nacked" if nacked else None)

    def _on_closed(self, conn: Any, reason: BaseException) -> None:
        self._failed = type(reason).__name__
        self._ready.clear()
        self._fail_pending("connection closed")
        conn.ioloop.stop()

    def _close_from_loop(self) -> None:
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        elif self._conn is not None:
            self._conn.ioloop.stop()

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for batch in {id(b): b for b in pending.values()}.values():
            batch.error = batch.error or reason
            batch.done.set()
