"""Settings kept per sender, keyed ``"APP"`` (MSH-3) or ``"APP|FACILITY"`` (MSH-3 and MSH-4):
``charset_by_sender`` and ``mllp_application_ack_routes`` read their keys and match
headers the same way, here.

Matching is case-insensitive on the first component of each field (the namespace id:
senders vary the OID components, not the name), and ``"APP|FACILITY"`` wins over ``"APP"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from connectors.hl7.header import MessageHeader

SenderKey = tuple[str, str]  # (application, facility), facility "" for an "APP" key
V = TypeVar("V")


def sender_key(key: object, setting: str) -> SenderKey:
    """A configured key as matched; ValueError naming ``setting`` when it is malformed."""
    if not isinstance(key, str):
        raise ValueError(f"{setting} key {key!r} is not a string")
    app, sep, facility = key.partition("|")
    # Keys may be copied from MSH-3/MSH-4 whole; like the header, only the first component counts.
    app, facility = _first_component(app, "^"), _first_component(facility, "^")
    if not app or (sep and not facility) or "|" in facility:
        raise ValueError(f"{setting} key {key!r} is not 'APP' or 'APP|FACILITY'")
    return app, facility


def for_sender(table: Mapping[SenderKey, V], header: MessageHeader) -> V | None:
    """The value for the header's sender: its ``APP|FACILITY`` key, else its ``APP`` key."""
    app = _first_component(header.sending_application, header.component_separator)
    facility = _first_component(header.sending_facility, header.component_separator)
    if facility and (app, facility) in table:
        return table[app, facility]
    return table.get((app, ""))


def _first_component(value: str, separator: str) -> str:
    return value.split(separator, 1)[0].strip().casefold()
