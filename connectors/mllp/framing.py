"""MLLP framing, sans-IO: bytes in, frames and problems out.

Hand-written on purpose: python-hl7's ``hl7.mllp`` is asyncio-stream based and couples
framing with the reader (it raises on the first irregularity and buffers without a bound),
while the server needs a framer that never raises, reports every irregularity as data, keeps
at most ``max_frame_bytes`` in memory and can be unit-tested without sockets. The shape
follows Google's MLLP adapter (``mllp/shared/mllp``): a tiny pure package.

Wire format: ``0x0B payload 0x1C 0x0D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"

# Senders commonly put a newline after the trailer; that is noise, not junk worth reporting.
_INTER_FRAME_WHITESPACE = b" \t\r\n"


class ProblemCode(StrEnum):
    # Bytes outside any frame (ASCII whitespace alone is not reported), one report per run.
    JUNK_BEFORE_START = "junk-before-start"
    # A complete frame longer than max_frame_bytes, reported once at its end block: the
    # sender is waiting for an answer to it. ``content`` holds its first max_frame_bytes.
    OVERSIZED = "oversized"
    # A start block inside a frame: the partial frame was abandoned by the sender (no
    # answer expected); the new frame continues normally.
    NESTED_START = "nested-start"
    # 0x1C not followed by 0x0D. The payload is complete and is delivered right after.
    BAD_TRAILER = "bad-trailer"
    # The stream ended inside a frame (only from close()).
    TRUNCATED = "truncated"


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes


@dataclass(frozen=True, slots=True)
class FrameProblem:
    """An irregularity in the byte stream.

    ``nbytes`` is how many bytes the problem covers; ``content`` is what was kept of an
    abandoned frame (at most ``max_frame_bytes``; empty for junk and bad trailers) so the
    caller can quarantine it.
    """

    code: ProblemCode
    detail: str
    nbytes: int
    content: bytes = b""


FrameEvent = Frame | FrameProblem


class _State(StrEnum):
    BETWEEN = "between"  # outside a frame, waiting for a start block
    IN_FRAME = "in-frame"
    TRAILER = "trailer"  # saw 0x1C, expecting 0x0D


class FrameReader:
    """Incremental decoder; feed it whatever the socket returns, in any chunking."""

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self._max = max_frame_bytes
        self._state = _State.BETWEEN
        self._buf = bytearray()
        self._frame_len = 0  # counts discarded bytes too, so oversize reports the true size
        self._junk_len = 0
        self._junk_significant = False
        # Bytes taken inside frames since the start, never reset: a listener tells progress
        # (traffic) from stray bytes between frames, which never count here.
        self.framed_bytes = 0

    @property
    def in_frame(self) -> bool:
        """A start block was read and its frame has not ended yet."""
        return self._state is not _State.BETWEEN

    def feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._state is _State.BETWEEN:
                start = data.find(START_BLOCK, pos)
                stop = end if start < 0 else start
                self._note_junk(data[pos:stop])
                if start < 0:
                    break
                self._flush_junk(events)
                self._begin_frame()
                pos = start + 1
            elif self._state is _State.IN_FRAME:
                # Two memchr-backed finds beat one regex scan by an order of magnitude.
                stop = data.find(END_BLOCK, pos)
                stop = end if stop < 0 else stop
                nested = data.find(START_BLOCK, pos, stop)
                stop = stop if nested < 0 else nested
                self._append(data[pos:stop])
                if stop == end:
                    break
                pos = stop + 1
                if nested >= 0:
                    # The sender gave up on the previous frame (typically a resend after a
                    # timeout); the new start block wins.
                    self._abandon(events, ProblemCode.NESTED_START, "start block inside a frame")
                    self._begin_frame()
                else:
                    self._state = _State.TRAILER
            else:
                if data[pos : pos + 1] == CARRIAGE_RETURN:
                    pos += 1
                else:
                    # The payload is complete at 0x1C; accept it and re-read this byte as
                    # the start of whatever comes next.
                    events.append(FrameProblem(ProblemCode.BAD_TRAILER, "end block not followed by CR", 1))
                self._finish(events)
        return events

    def close(self) -> list[FrameEvent]:
        """End of stream: report whatever is pending and reset."""
        events: list[FrameEvent] = []
        self._flush_junk(events)
        if self._state is _State.IN_FRAME:
            self._abandon(events, ProblemCode.TRUNCATED, "stream ended inside a frame")
        elif self._state is _State.TRAILER:
            events.append(FrameProblem(ProblemCode.BAD_TRAILER, "stream ended after end block", 1))
            self._finish(events)
        self._state = _State.BETWEEN
        return events

    def _note_junk(self, chunk: bytes) -> None:
        if chunk:
            self._junk_len += len(chunk)
            if not self._junk_significant and chunk.strip(_INTER_FRAME_WHITESPACE):
                self._junk_significant = True

    def _flush_junk(self, events: list[FrameEvent]) -> None:
        if self._junk_significant:
            events.append(
                FrameProblem(ProblemCode.JUNK_BEFORE_START, "bytes outside a frame", self._junk_len)
            )
        self._junk_len = 0
        self._junk_significant = False

    def _begin_frame(self) -> None:
        self._state = _State.IN_FRAME
        self._buf = bytearray()
        self._frame_len = 0

    def _append(self, chunk: bytes) -> None:
        room = self._max - len(self._buf)
        if room > 0:
            self._buf += chunk[:room]
        self._frame_len += len(chunk)
        self.framed_bytes += len(chunk)

    def _oversized(self) -> FrameProblem:
        return FrameProblem(
            ProblemCode.OVERSIZED,
            f"frame exceeds {self._max} bytes",
            self._frame_len,
            bytes(self._buf),
        )

    def _abandon(self, events: list[FrameEvent], code: ProblemCode, detail: str) -> None:
        # An abandoned frame keeps its own code even when it was also too large: the sender
        # is not waiting for an answer to it, whereas OVERSIZED means "complete frame, answer it".
        if self._frame_len > self._max:
            detail = f"{detail}; frame exceeded {self._max} bytes"
        events.append(FrameProblem(code, detail, self._frame_len, bytes(self._buf)))
        self._state = _State.BETWEEN
        self._buf = bytearray()
        self._frame_len = 0

    def _finish(self, events: list[FrameEvent]) -> None:
        if self._frame_len > self._max:
            events.append(self._oversized())
        else:
            events.append(Frame(bytes(self._buf)))
        self._state = _State.BETWEEN
        self._buf = bytearray()
        self._frame_len = 0


def encode_frame(payload: bytes) -> bytes:
    if START_BLOCK in payload or END_BLOCK in payload:
        # Such a payload could never be read back as one frame.
        raise ValueError("payload contains an MLLP block character")
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN
