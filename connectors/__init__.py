"""Connectors: how bytes from the hospital enter the inbox (read-only; only ACKs go out).

Imports nothing of the project but ``core``.
"""

from connectors.base import InboundMessage, MessageSink, Receipt, Rejected
from connectors.files import DropFolder, DropFolderConfig, FileOutcome, FileStatus
from connectors.hl7 import AckCode, MessageHeader, build_ack, decode_message, peek_header, split_messages
from connectors.mllp import MllpClient, MllpConfig, MllpServer

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
