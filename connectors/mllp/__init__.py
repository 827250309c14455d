"""MLLP: sans-IO framing, the asyncio listener and a small blocking client."""

from connectors.mllp.client import MllpClient
from connectors.mllp.framing import (
    CARRIAGE_RETURN,
    END_BLOCK,
    START_BLOCK,
    Frame,
    FrameEvent,
    FrameProblem,
    FrameReader,
    ProblemCode,
    encode_frame,
)
from connectors.mllp.server import MllpConfig, MllpServer

__all__ = [
    "CARRIAGE_RETURN",
    "END_BLOCK",
    "START_BLOCK",
    "Frame",
    "FrameEvent",
    "FrameProblem",
    "FrameReader",
    "MllpClient",
    "MllpConfig",
    "MllpServer",
    "ProblemCode",
    "encode_frame",
]
