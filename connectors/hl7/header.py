"""Read just enough of an MSH segment to accept, route and acknowledge a message.

This runs on the accept path before anything is stored, so it touches only the first
segment, works on bytes, and never builds a parse tree. HL7 requires the MSH delimiters
to be ASCII whatever MSH-18 says, so splitting the raw bytes is sound; the few fields kept
are decoded as latin-1, which cannot fail and maps each byte to one character (so the
original bytes can be recovered exactly with ``.encode("latin-1")``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from core.errors import IngestError

_BOM = b"\xef\xbb\xbf"
_LEADING_WHITESPACE = frozenset(b" \t\r\n")
_DEFAULT_ENCODING_CHARACTERS = "^~\\&"
# MSH-1 can be any printable ASCII byte that is not a letter, digit or space.
_FIELD_SEPARATORS = frozenset(c for c in range(0x21, 0x7F) if not chr(c).isalnum())
_MIN_FIELDS = 12  # MSH-12 (version) is the last field an original-mode ACK needs
_LAST_FIELD_READ = 18  # MSH-18, the character set
# The inbox's column widths (HL7 v2.7 lets MSH-10 be 199 characters). Longer values are
# rejected here: PostgreSQL would refuse the row, answering AE to every resend forever.
MAX_CONTROL_ID = 199
MAX_SENDER = 400  # MSH-3 "|" MSH-4


class HeaderError(IngestError):
    """The bytes are not an HL7 message we can accept.

    ``hl7_error_code`` is the HL7 table 0357 code for the ERR segment of the rejection.
    Messages never carry data values, only which rule failed.
    """

    code = "bad-header"

    def __init__(self, reason: str, hl7_error_code: str = "100") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hl7_error_code = hl7_error_code


@dataclass(frozen=True)
class MessageHeader:
    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # MSH-9.1^MSH-9.2, e.g. "ORU^R01" (just "ACK" when there is no 9.2)
    trigger_event: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str
    application_ack_type: str
    charset: str  # MSH-18, first repetition; "" when absent

    @functools.cached_property
    def sender(self) -> str:
        # Cached: the inbox, the resend check and the metrics each ask, per message.
        return f"{self.sending_application}|{self.sending_facility}"

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[:1] or "^"

    @property
    def repetition_separator(self) -> str:
        return self.encoding_characters[1:2] or "~"


def _skip_preamble(raw: bytes) -> int:
    pos = len(_BOM) if raw.startswith(_BOM) else 0
    # A bounded loop instead of lstrip(): lstrip would copy the whole message.
    while pos < len(raw) and raw[pos] in _LEADING_WHITESPACE:
        pos += 1
    return pos


def _field(fields: list[bytes], number: int) -> str:
    """MSH-<number> as text; MSH-1 is the separator itself, so MSH-n is fields[n - 1]."""
    index = number - 1
    return fields[index].decode("latin-1").strip() if index < len(fields) else ""


def peek_header(raw: bytes) -> MessageHeader:
    start = _skip_preamble(raw)
    if raw[start : start + 3] != b"MSH" or len(raw) < start + 4:
        raise HeaderError("does not start with an MSH segment")
    separator = raw[start + 3]
    if separator not in _FIELD_SEPARATORS:
        raise HeaderError("MSH-1 (field separator) is not a valid separator")

    end = raw.find(b"\r", start)
    end = len(raw) if end < 0 else end
    newline = raw.find(b"\n", start, end)  # bounded: normal messages have no \n to look for
    segment = raw[start : end if newline < 0 else newline]
    # Nothing past MSH-18 is read; bounding the split keeps a hostile MSH cheap.
    fields = segment.split(bytes((separator,)), _LAST_FIELD_READ)
    if len(fields) < _MIN_FIELDS:
        raise HeaderError(f"MSH has fewer than {_MIN_FIELDS} fields", "101")

    encoding_characters = fields[1].decode("latin-1")
    component = encoding_characters[:1] or _DEFAULT_ENCODING_CHARACTERS[0]
    repetition = encoding_characters[1:2] or _DEFAULT_ENCODING_CHARACTERS[1]

    type_components = _field(fields, 9).split(component)
    kind = type_components[0].strip()
    trigger = type_components[1].strip() if len(type_components) > 1 else ""
    if not kind:
        raise HeaderError("MSH-9 (message type) is empty", "101")
    control_id = _field(fields, 10)
    if not control_id:
        raise HeaderError("MSH-10 (control id) is empty", "101")
    if len(control_id) > MAX_CONTROL_ID:
        raise HeaderError(f"MSH-10 (control id) is longer than {MAX_CONTROL_ID} characters", "102")
    sending_application, sending_facility = _field(fields, 3), _field(fields, 4)
    if len(sending_application) + 1 + len(sending_facility) > MAX_SENDER:
        raise HeaderError(f"MSH-3 and MSH-4 (sender) are longer than {MAX_SENDER} characters together", "102")

    return MessageHeader(
        field_separator=chr(separator),
        encoding_characters=encoding_characters,
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application=_field(fields, 5),
        receiving_facility=_field(fields, 6),
        # Always "^" here, whatever MSH-2 says: this is a routing key, not message text.
        message_type=f"{kind}^{trigger}" if trigger else kind,
        trigger_event=trigger,
        control_id=control_id,
        processing_id=_field(fields, 11),
        version=_field(fields, 12),
        accept_ack_type=_field(fields, 15),
        application_ack_type=_field(fields, 16),
        charset=_field(fields, 18).split(repetition)[0].strip(),
    )
