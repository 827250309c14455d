"""Which patient a raw message is about, for routing only (lanes keep a patient's
messages in order). Reads PID-3 off the bytes without a parse; the key never leaves the
identified zone: only its hash picks a lane."""

from __future__ import annotations

import zlib

from connectors.hl7.header import MessageHeader


def patient_route_key(raw: bytes, header: MessageHeader) -> bytes:
    """``authority|id`` of PID-3's first repetition, or the message's own identity when it
    names no patient (any lane will do then)."""
    sep = header.field_separator.encode("latin-1")
    comp = header.component_separator.encode("latin-1")
    rep = header.repetition_separator.encode("latin-1")
    for segment in raw.replace(b"\n", b"\r").split(b"\r"):
        if segment[:3] == b"PID" and segment[3:4] == sep:
            fields = segment.split(sep)
            if len(fields) > 3 and fields[3]:
                cx = fields[3].split(rep)[0].split(comp)
                value = cx[0].strip()
                authority = cx[3].split(b"&")[0].strip() if len(cx) > 3 else b""
                if value:
                    return authority.upper() + b"|" + value
            break
    return f"{header.sender}|{header.control_id}".encode("latin-1", "replace")


def lane_of(key: bytes, lanes: int) -> int:
    # crc32, not hash(): stable across processes and restarts.
    return zlib.crc32(key) % lanes
