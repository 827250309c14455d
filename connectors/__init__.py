"""Connectors: how bytes from the hospital enter the inbox (read-only; only ACKs and DICOM
responses go out). MLLP (``connectors.mllp``), HL7 v2 headers, charsets and ACKs
(``connectors.hl7``), the drop folder (``connectors.files``), the DICOM Storage SCP
(``connectors.dicom``), the intake journal and the database inbox.

Imports ``core`` and ``audit`` (the inbox's audit entries), nothing else of the project.
Members load on first use (``core.frontdoor``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.frontdoor import lazy_exports

if TYPE_CHECKING:
    from connectors.base import InboundMessage, MessageSink, Receipt, Rejected
    from connectors.files import DropFolder, DropFolderConfig, FileOutcome, FileStatus
    from connectors.hl7 import AckCode, MessageHeader, build_ack, decode_message, peek_header, split_messages
    from connectors.mllp import MllpClient, MllpConfig, MllpServer

_EXPORTS = {
    "AckCode": "connectors.hl7",
    "DropFolder": "connectors.files",
    "DropFolderConfig": "connectors.files",
    "FileOutcome": "connectors.files",
    "FileStatus": "connectors.files",
    "InboundMessage": "connectors.base",
    "MessageHeader": "connectors.hl7",
    "MessageSink": "connectors.base",
    "MllpClient": "connectors.mllp",
    "MllpConfig": "connectors.mllp",
    "MllpServer": "connectors.mllp",
    "Receipt": "connectors.base",
    "Rejected": "connectors.base",
    "build_ack": "connectors.hl7",
    "decode_message": "connectors.hl7",
    "peek_header": "connectors.hl7",
    "split_messages": "connectors.hl7",
}
__all__ = [
    "AckCode",
    "DropFolder",
    "DropFolderConfig",
    "FileOutcome",
    "FileStatus",
    "InboundMessage",
    "MessageHeader",
    "MessageSink",
    "MllpClient",
    "MllpConfig",
    "MllpServer",
    "Receipt",
    "Rejected",
    "build_ack",
    "decode_message",
    "peek_header",
    "split_messages",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)
