"""HL7 v2 on bytes: header peek, charset decoding, ACKs and batch splitting."""

from connectors.hl7.ack import AckCode, ack_code, build_ack, escape_text, new_control_id
from connectors.hl7.batch import split_messages
from connectors.hl7.charset import CharsetPolicy, Decoded, decode_message, python_codec
from connectors.hl7.header import HeaderError, MessageHeader, peek_header

__all__ = [
    "AckCode",
    "CharsetPolicy",
    "Decoded",
    "HeaderError",
    "MessageHeader",
    "ack_code",
    "build_ack",
    "decode_message",
    "escape_text",
    "new_control_id",
    "peek_header",
    "python_codec",
    "split_messages",
]
