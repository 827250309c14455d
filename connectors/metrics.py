"""Intake metrics for Prometheus.

Counters are labelled by sender (MSH-3|MSH-4), which the sender itself writes: every
distinct value is a series kept for the life of the process, so a value becomes a label
only for an admitted sender (past the allow-list), and only for the first
``max_senders`` of them; everything else is counted under ``other`` ("unknown" before a
header was read). Hospitals have a handful of interfaces, so real senders keep their own
labels while a flood of invented ones adds nothing. The other labels (ACK code, refusal
reason, timeout kind) are our own words. Nothing here ever sees message content.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DEFAULT_MAX_SENDERS", "OTHER", "UNKNOWN", "BoundedLabels", "IntakeMetrics", "SenderCounters"]

OTHER = "other"  # a sender not admitted, or admitted after the bound was reached
UNKNOWN = "unknown"  # no header could be read
DEFAULT_MAX_SENDERS = 64


class BoundedLabels:
    """Label values taken from input, bounded: the first ``limit`` values offered keep
    their own, every later one reads as ``other``. Values are never given back: a series
    once exported stays. For any connector labelling by what a peer sends (a calling AE
    title too)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must not be negative")
        self._limit = limit
        self._taken: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._taken:
            return value
        with self._lock:  # the listener's loop and the journal's mover both ask
            if len(self._taken) < self._limit:
                self._taken.add(value)
                return value
        return OTHER


@dataclass(frozen=True)
class SenderCounters:
    """One sender's counter children, looked up once: ``Counter.labels`` takes a lock and
    validates its arguments on every call, several times per message on the hot path."""

    received: Any
    acked: Any
    duplicates: Any
    repaired: Any


class IntakeMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_senders: int = DEFAULT_MAX_SENDERS,
    ) -> None:
        """``max_senders``: how many admitted senders get a label of their own."""
        # A registry per instance: tests and the demo may run several listeners in one
        # process, and prometheus_client's global registry refuses duplicate names.
        self.registry = registry or CollectorRegistry()
        self.received = Counter(
            "sidecar_mllp_messages_received", "Frames received", ["sender"], registry=self.registry
        )
        self.acked = Counter(
            "sidecar_mllp_messages_acked", "Positive ACKs (AA/CA) sent", ["sender"], registry=self.registry
        )
        self.nacked = Counter(
            "sidecar_mllp_messages_nacked",
            "Negative ACKs sent (AE/AR/CE/CR)",
            ["sender", "code"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "sidecar_mllp_messages_duplicate",
            "Resends of stored messages",
            ["sender"],
            registry=self.registry,
        )
        self.repaired = Counter(
            "sidecar_mllp_messages_repaired",
            "Messages whose bytes did not decode as declared (raw bytes kept)",
            ["sender"],
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "sidecar_mllp_ack_latency_seconds",
            "From a complete frame to its ACK being written",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.connections = Gauge("sidecar_mllp_connections", "Open MLLP connections", registry=self.registry)
        self.refused = Counter(
            "sidecar_mllp_connections_refused",
            "Connections closed at once: peer_limit, total_limit, peer_not_allowed, stopping",
            ["reason"],
            registry=self.registry,
        )
        self.timeouts = Counter(
            "sidecar_mllp_connections_timed_out",
            "Connections closed for silence (idle) or a frame not finished in time (frame)",
            ["kind"],
            registry=self.registry,
        )
        self.inbox_backlog = Gauge(
            "sidecar_inbox_backlog",
            "Acknowledged messages not yet through the pipeline",
            registry=self.registry,
        )
        self.journal_backlog = Gauge(
            "sidecar_intake_journal_backlog",
            "Messages acknowledged from the intake journal and not yet in the inbox",
            registry=self.registry,
        )
        self.journal_move_failures = Counter(
            "sidecar_intake_journal_move_failures",
            "Failed attempts to store journaled messages in the inbox (retried)",
            registry=self.registry,
        )
        self.sender_label = BoundedLabels(max_senders)
        self._senders: dict[str, SenderCounters] = {}

    def of(self, sender: str) -> SenderCounters:
        """The counters of an admitted sender: its own, or ``other`` past the bound."""
        counters = self._senders.get(sender)
        if counters is None:
            label = self.sender_label(sender)
            counters = self._senders.get(label) or self._counters(label)
            if label == sender:
                self._senders[sender] = counters
            # Past the bound nothing is cached per value either: the cache must not grow.
        return counters

    @property
    def other(self) -> SenderCounters:
        """The counters of senders not admitted (the allow-list turned them away)."""
        return self._senders.get(OTHER) or self._counters(OTHER)

    def _counters(self, label: str) -> SenderCounters:
        counters = SenderCounters(
            self.received.labels(label),
            self.acked.labels(label),
            self.duplicates.labels(label),
            self.repaired.labels(label),
        )
        if label == OTHER:
            self._senders[OTHER] = counters
        return counters
