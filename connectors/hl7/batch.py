"""Split a file's bytes into HL7 messages.

Files arrive in every shape: one message or many, with or without FHS/BHS batch envelopes,
with \\r, \\n or \\r\\n line ends, with a UTF-8 BOM (or one per concatenated file), and
sometimes still MLLP-framed. Works on bytes so no charset decision is made here.
"""

from __future__ import annotations

import re

from core.errors import IngestError

_BOM = b"\xef\xbb\xbf"
# 0x0B/0x1C are MLLP block characters, 0x1A is the DOS end-of-file mark.
_LINE_BREAK = re.compile(b"\r\n|[\r\n\x0b\x1c\x1a]")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


def _segment_id(line: bytes) -> bytes:
    # A segment id is three characters followed by the field separator (or nothing).
    if len(line) > 3 and line[3:4].isalnum():
        return b""
    return line[:3]


def split_messages(data: bytes) -> list[bytes]:
    """Each message's segments, each segment terminated by \\r; envelopes and blanks dropped.

    Raises IngestError when there is no MSH at all or when segments precede the first MSH
    (rather than silently dropping data that belongs to no message).
    """
    messages: list[list[bytes]] = []
    orphans = False
    for line in _LINE_BREAK.split(data):
        line = line.removeprefix(_BOM).lstrip(b" \t")
        if not line.strip():
            continue
        segment_id = _segment_id(line)
        if segment_id in _ENVELOPE:
            continue
        if segment_id == b"MSH":
            messages.append([line])
        elif messages:
            messages[-1].append(line)
        else:
            orphans = True
    if not messages:
        raise IngestError("no MSH segment found")
    if orphans:
        raise IngestError("segment before the first MSH")
    return [b"".join(segment + b"\r" for segment in segments) for segments in messages]
