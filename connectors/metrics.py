"""Intake metrics for Prometheus.

Counters are labelled by sender (MSH-3|MSH-4, or "unknown" before a header was read):
hospitals have a handful of interfaces, so the label set stays small. Nothing here ever
sees message content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_MAX_CACHED_SENDERS = 1024


@dataclass(frozen=True)
class SenderCounters:
    """One sender's counter children, looked up once: ``Counter.labels`` takes a lock and
    validates its arguments on every call, several times per message on the hot path."""

    received: Any
    acked: Any
    duplicates: Any
    repaired: Any


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
        self._senders: dict[str, SenderCounters] = {}

    def of(self, sender: str) -> SenderCounters:
        counters = self._senders.get(sender)
        if counters is None:
            if len(self._senders) >= _MAX_CACHED_SENDERS:
                self._senders.clear()  # a cache only: the counters themselves live on
            counters = SenderCounters(
                self.received.labels(sender),
                self.acked.labels(sender),
                self.duplicates.labels(sender),
                self.repaired.labels(sender),
            )
            self._senders[sender] = counters
        return counters
