"""What a connector needs from the rest of the system, defined by the connector (consumer).

A listener depends only on these protocols; the database-backed inbox (connectors.inbox)
and the in-memory sinks of tests both satisfy them structurally.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from connectors.hl7.header import MessageHeader


@dataclass(frozen=True)
class InboundMessage:
    raw: bytes  # exactly as received (MLLP frame payload), never re-encoded
    header: MessageHeader
    charset: str  # Python codec that decodes ``raw`` (see connectors.hl7.charset)
    repaired: bool  # the codec differs from what MSH-18 (or the default) declared
    source: str  # "mllp", later "file", ...
    peer: str  # "127.0.0.1:54321"
    received_at: datetime  # UTC, aware


@dataclass(frozen=True)
class Receipt:
    # None: durable in the intake journal (connectors.journal), which reports the inbox's
    # own receipt to the commit listener once the message is in the inbox.
    inbox_id: int | None
    duplicate: bool  # a resend of a message already stored (same sender and control id)


@dataclass(frozen=True)
class StoredReceipt(Receipt):
    """The inbox's own receipt: the message has its inbox entry."""

    inbox_id: int


@dataclass(frozen=True)
class Rejected:
    raw: bytes  # what was received (for oversized frames: the first max_frame_bytes)
    source: str
    peer: str
    reason: str  # short, never contains data values
    code: str  # stable machine key, e.g. "bad-header", "oversized"
    received_at: datetime


CommitListener = Callable[[Receipt, InboundMessage], None]


def notify_committed(
    listener: CommitListener | None,
    receipt: Receipt,
    message: InboundMessage,
    log: logging.Logger,
    event: str,
) -> None:
    """Tell the listener a message is durable. Its failure is its own problem (a
    notification, as in pynetdicom): logged by type, never allowed to undo the ACK."""
    if listener is None:
        return
    try:
        listener(receipt, message)
    except Exception as exc:
        log.error(
            "on_committed failed",
            extra={"event": event, "inbox_id": receipt.inbox_id, "error": type(exc).__name__},
        )


class MessageSink(Protocol):
    def commit_many(self, messages: Sequence[InboundMessage]) -> Sequence[Receipt]:
        """Store all in ONE durable transaction; receipts in input order. Blocking.

        Returns only once everything is durable; raises (storing nothing) on failure.
        Batch-shaped so that concurrent messages share one commit (group commit): the
        fsync, not the insert, is what a durable listener pays for.
        """
        ...

    def quarantine(self, item: Rejected) -> int:
        """Store a rejected input durably and return its quarantine id. Blocking."""
        ...


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(allowed: Sequence[str]) -> tuple[Network, ...]:
    """The networks of an allow-list ("10.1.0.0/16", "127.0.0.1"); raises ValueError."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed)


def peer_in(networks: Sequence[Network], host: str) -> bool:
    """Whether a peer address is allowed: every address when the list is empty."""
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)
