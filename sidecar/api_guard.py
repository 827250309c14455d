"""The HTTP API's listener under abuse: connection caps (total and per peer), a deadline
for each request that trickled bytes do not extend, TLS handshakes inside both, and the
process's file-descriptor limit they are derived from.

uvicorn offers none of these: ``limit_concurrency`` counts requests (a half-sent request
holds a connection and never becomes one) and ``timeout_keep_alive`` covers only idle
time between requests; h11 has no header timeout. So the API runs uvicorn's own h11
protocol, subclassed: a connection over a cap is answered 503 and closed before any
parsing, and every connection owes a complete request within ``header_timeout_s``
(slowloris). TLS is started here rather than by the listening socket, so that a
handshake is counted and timed like the request after it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.errors import ConfigError

__all__ = [
    "ConnectionGate",
    "ConnectionLimits",
    "GateCollector",
    "guarded_protocol",
    "raise_fd_limit",
    "soft_fd_limit",
]

log = logging.getLogger("sidecar.api.connections")

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_UNLIMITED_TARGET = 65536  # what "raise to the hard limit" means when the hard limit is unlimited


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (a process may, unprivileged) and
    return the soft limit now in force: listeners' caps are derived from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the file-descriptor limit", extra={"soft": soft, "hard": hard})
    return _UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


def soft_fd_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class ConnectionLimits:
    total: int
    per_peer: int
    header_timeout_s: float
    backlog: int  # accepted per event-loop round before any is refused: counts against descriptors

    @classmethod
    def derive(
        cls, fd_limit: int, total: int | None, per_peer: int | None, header_timeout_s: float
    ) -> ConnectionLimits:
        """Defaults from the descriptor limit; explicit values checked against it, so the
        API alone can never exhaust it (MLLP, DICOM and the database need their share)."""
        total = total if total is not None else max(16, min(1024, fd_limit // 8))
        per_peer = min(total, per_peer if per_peer is not None else max(1, total // 4))
        backlog = max(16, min(128, total // 2))
        if total + backlog > fd_limit // 2:
            raise ConfigError(
                f"api_max_connections={total} does not fit the process's file-descriptor limit "
                f"({fd_limit}): keep it under {max(1, fd_limit // 2 - backlog)} or raise the limit"
            )
        return cls(total, per_peer, header_timeout_s, backlog)


class ConnectionGate:
    """Counts open connections, in total and per peer address. Used from the API's event
    loop only, so it needs no lock."""

    def __init__(
        self, limits: ConnectionLimits, *, tls: ssl.SSLContext | None, peer_ref: Callable[[str], str]
    ):
        self.limits, self.tls, self._peer_ref = limits, tls, peer_ref
        self._by_peer: Counter[str] = Counter()
        self.open = 0
        self.refused_by_cap: Counter[str] = Counter()
        self.timed_out = 0

    def admit(self, peer: str) -> str | None:
        """None if admitted (then ``release`` once), else the reason of the refusal."""
        if self.open >= self.limits.total:
            reason = "total"
        elif self._by_peer[peer] >= self.limits.per_peer:
            reason = "per-peer"
        else:
            self.open += 1
            self._by_peer[peer] += 1
            return None
        self.refused_by_cap[reason] += 1
        log.warning(
            "HTTP connection refused: over the cap",
            extra={"event": "api.connection_refused", "cap": reason, "peer": self._peer_ref(peer),
                   "refused_total": self.refused_by_cap.total()},
        )  # fmt: skip
        return reason

    def release(self, peer: str) -> None:
        self.open -= 1
        self._by_peer[peer] -= 1
        if self._by_peer[peer] <= 0:
            del self._by_peer[peer]

    def note_timeout(self, peer: str) -> None:
        self.timed_out += 1
        log.warning(
            "HTTP connection closed: request not complete in time",
            extra={
                "event": "api.header_timeout",
                "peer": self._peer_ref(peer),
                "timed_out_total": self.timed_out,
            },
        )


class GateCollector(Collector):
    """The gate's counts as Prometheus metrics, read when scraped (labels are our words)."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "sidecar_api_connections_refused", "HTTP API connections refused over a cap", labels=["cap"]
        )
        for cap in ("total", "per-peer"):
            refused.add_metric([cap], self._gate.refused_by_cap[cap])
        yield refused
        yield CounterMetricFamily(
            "sidecar_api_connections_timed_out",
            "HTTP API connections closed without a complete request in time",
            value=self._gate.timed_out,
        )
        yield GaugeMetricFamily(
            "sidecar_api_connections_open", "HTTP API connections open", value=self._gate.open
        )


class _GuardedH11(H11Protocol):
    gate: ClassVar[ConnectionGate]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._raw: asyncio.Transport | None = None  # the TCP transport while TLS is negotiated
        self._made = False  # uvicorn's connection_made ran: its connection_lost may run
        self._early: list[bytes] = []  # decrypted before start_tls returned to us

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        assert isinstance(transport, asyncio.Transport)
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if peername else "unknown"
        if self.gate.admit(peer) is not None:
            if self.gate.tls is None:
                transport.write(_REFUSED)
                transport.close()
            else:
                transport.abort()  # nothing readable to say before a handshake
            return
        self._peer = peer
        # From the first moment: a connection that sends nothing is as slow as one that trickles.
        self._deadline = self.loop.call_later(self.gate.limits.header_timeout_s, self._on_deadline)
        if self.gate.tls is None:
            self._made = True
            super().connection_made(transport)
            return
        self._raw = transport
        self.loop.create_task(self._start_tls(transport, self.gate.tls))

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            # The handshake's own timeout is a backstop only: the deadline closes it first.
            secured = await self.loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.gate.limits.header_timeout_s + 5,
            )
        except asyncio.CancelledError:
            raw.abort()
            self._release()
            raise
        except (OSError, ssl.SSLError, TimeoutError, RuntimeError):
            raw.abort()
            self._release()
            return
        self._raw = None
        if secured is None or self._peer is None:
            raw.abort()
            self._release()
            return
        self._made = True
        super().connection_made(secured)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if not self._made:
            # The TLS layer hands over what arrived with the end of the handshake before
            # our start_tls call has resumed: keep it for uvicorn's connection.
            self._early.append(data)
            return
        super().data_received(data)
        if self._peer is None or self.transport.is_closing():
            return
        state = self.conn.their_state
        if (state is h11.IDLE and self.conn.trailing_data[0]) or state is h11.SEND_BODY:
            # A request is under way: its deadline runs from its first byte and is never
            # pushed back by later ones.
            if self._deadline is None:
                self._deadline = self.loop.call_later(self.gate.limits.header_timeout_s, self._on_deadline)
        elif state is not h11.IDLE:
            self._cancel_deadline()  # complete (or failed): the app or uvicorn has it now

    def _on_deadline(self) -> None:
        self._deadline = None
        if self._peer is None:
            return
        if self._raw is not None:  # still negotiating TLS
            self.gate.note_timeout(self._peer)
            self._raw.abort()
            return
        state = self.conn.their_state
        if state not in (h11.IDLE, h11.SEND_BODY) or self.transport.is_closing():
            return
        self.gate.note_timeout(self._peer)
        if state is h11.IDLE and self.conn.our_state is h11.IDLE and self.gate.tls is None:
            self.transport.write(_TIMED_OUT)
        self.transport.close()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _release(self) -> None:
        self._cancel_deadline()
        if self._peer is not None:
            self.gate.release(self._peer)
            self._peer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._made:
            super().connection_lost(exc)


def guarded_protocol(gate: ConnectionGate) -> type[H11Protocol]:
    """uvicorn's h11 protocol behind ``gate`` (uvicorn builds one instance per connection)."""
    return type("GuardedH11Protocol", (_GuardedH11,), {"gate": gate})
