"""Original-mode HL7 acknowledgements (MSH + MSA [+ ERR]) — the only bytes we ever send.

Built by hand rather than with python-hl7/hl7apy: an ACK is three short segments, and
building it from strings keeps the incoming header fields byte-for-byte (senders match
MSH-5/6 of the ACK against their own MSH-3/4) without a parse/serialise round trip.
"""

from __future__ import annotations

import itertools
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum

from connectors.hl7.header import MessageHeader

_DEFAULT_FIELD_SEPARATOR = "|"
_DEFAULT_ENCODING_CHARACTERS = "^~\\&"
_DEFAULT_PROCESSING_ID = "P"
_DEFAULT_VERSION = "2.5.1"
_MAX_ERROR_TEXT = 200  # keeps ACKs small whatever reason a caller passes
# Control characters would corrupt the ACK's segments or its MLLP frame (0x0B, 0x1C).
_CONTROL = dict.fromkeys([*range(0x20), 0x7F])


class AckCode(StrEnum):
    AA = "AA"  # accepted (original mode) / application accept
    AE = "AE"  # error: the sender should resend
    AR = "AR"  # rejected: resending the same bytes will not help
    CA = "CA"  # enhanced-mode commit accept
    CE = "CE"
    CR = "CR"


def _delimiters(header: MessageHeader | None) -> tuple[str, str]:
    if header is None:
        return _DEFAULT_FIELD_SEPARATOR, _DEFAULT_ENCODING_CHARACTERS
    encoding = header.encoding_characters
    # Escaping needs all four characters, distinct and distinct from MSH-1; if the sender's
    # are unusable, the standard ones are valid in our own message.
    usable = (
        len(encoding) >= 4
        and len(set(encoding[:4])) == 4
        and header.field_separator not in encoding
        and all(0x20 < ord(c) < 0x7F for c in encoding)
    )
    return header.field_separator, encoding if usable else _DEFAULT_ENCODING_CHARACTERS


def escape_text(text: str, field_separator: str = "|", encoding_characters: str = "^~\\&") -> str:
    """HL7 escaping of free text, reduced to printable ASCII (our ACKs declare no charset)."""
    component, repetition, escape, subcomponent = (encoding_characters[i] for i in range(4))
    replacements = {
        escape: f"{escape}E{escape}",
        field_separator: f"{escape}F{escape}",
        component: f"{escape}S{escape}",
        repetition: f"{escape}R{escape}",
        subcomponent: f"{escape}T{escape}",
    }
    out = []
    for char in text[:_MAX_ERROR_TEXT]:
        if char in replacements:
            out.append(replacements[char])
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append(" " if char in "\r\n\t" else "?")
    return "".join(out)


def _echo(value: str) -> str:
    return value.translate(_CONTROL)


def _timestamp(now: datetime | None) -> str:
    if now is None:
        return _current_timestamp()
    moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return moment.strftime("%Y%m%d%H%M%S%z")


_second: list[tuple[int, str]] = [(-1, "")]


def _current_timestamp() -> str:
    # Formatted once per second, not per ACK: the local-zone conversion and strftime were
    # a tenth of the listener's CPU per message (profiled with bench/mllp.py).
    second = int(time.time())
    cached = _second[0]
    if cached[0] != second:
        stamp = datetime.fromtimestamp(second, UTC).astimezone().strftime("%Y%m%d%H%M%S%z")
        cached = _second[0] = (second, stamp)
    return cached[1]


# 20 characters, the MSH-10 maximum in v2.3-2.5: 40 random bits drawn once per process,
# then a counter. Unique within a process by construction, and across restarts as long as
# two processes do not draw the same 40 bits; uuid4() per ACK cost a urandom system call.
_CONTROL_PREFIX = secrets.token_hex(5).upper()
_control_counter = itertools.count(1)


def new_control_id() -> str:
    return f"{_CONTROL_PREFIX}{next(_control_counter) % 16**10:010X}"


def build_ack(
    header: MessageHeader | None,
    code: AckCode,
    *,
    error: str | None = None,
    error_code: str = "207",
    now: datetime | None = None,
    accept_ack_type: str | None = None,
) -> bytes:
    fs, encoding = _delimiters(header)
    component = encoding[0]
    if header is not None:
        message_type = (
            f"ACK{component}{header.trigger_event}{component}ACK" if header.trigger_event else "ACK"
        )
        msh = [
            "MSH",
            encoding,
            _echo(header.receiving_application),
            _echo(header.receiving_facility),
            _echo(header.sending_application),
            _echo(header.sending_facility),
            _timestamp(now),
            "",
            message_type,
            new_control_id(),
            _echo(header.processing_id) or _DEFAULT_PROCESSING_ID,
            _echo(header.version) or _DEFAULT_VERSION,
        ]
        acknowledged = _echo(header.control_id)
        if accept_ack_type is not None:
            # An application ACK (enhanced mode) asks for a commit ACK of its own (MSH-15),
            # so delivery is confirmed, and for no application ACK (MSH-16 NE): no loop.
            msh += ["", "", accept_ack_type, "NE"]
    else:
        msh = [
            "MSH",
            encoding,
            "",
            "",
            "",
            "",
            _timestamp(now),
            "",
            "ACK",
            new_control_id(),
            _DEFAULT_PROCESSING_ID,
            _DEFAULT_VERSION,
        ]
        acknowledged = ""

    segments = [fs.join(msh)]
    msa = ["MSA", str(code), acknowledged]
    if error is not None:
        text = escape_text(error, fs, encoding)
        msa.append(text)
        segments.append(fs.join(msa))
        segments.append(fs.join(["ERR", "", "", component.join([error_code, text, "HL70357"]), "E"]))
    else:
        segments.append(fs.join(msa))
    # latin-1 so echoed header fields go back as the exact bytes received; everything we
    # generate ourselves is ASCII.
    return "".join(f"{segment}\r" for segment in segments).encode("latin-1", errors="replace")


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK as received (AA, CA, AE...), upper case; "" when it has no MSA."""
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment[:3] == b"MSA" and len(segment) > 4:
            return segment[4:].split(segment[3:4], 1)[0].decode("latin-1").strip().upper()
    return ""
