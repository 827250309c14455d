"""A small blocking MLLP client for tests, the demo and the synthetic hospital, and for
delivering application ACKs to a sender's configured return path (worker.appacks): the
only thing the sidecar ever sends to a hospital system is an acknowledgement.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from types import TracebackType
from typing import Self

from connectors.mllp.framing import Frame, FrameProblem, FrameReader, ProblemCode, encode_frame
from core.errors import FramingError

_READ_CHUNK = 65_536


class MllpClient:
    def __init__(self, *, max_frame_bytes: int = 1_048_576) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._sock: socket.socket | None = None
        self._reader = FrameReader(max_frame_bytes)
        self._pending: deque[bytes] = deque()

    def connect(
        self,
        host: str,
        port: int,
        timeout: float = 10.0,
        *,
        tls: ssl.SSLContext | None = None,
        source: str | None = None,
    ) -> Self:
        """Connect; ``timeout`` also bounds every later send/receive (and the TLS handshake).
        ``source``: the local address to connect from (tests play a second peer from 127.0.0.2)."""
        self.close()
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
        self._sock = sock
        self._reader = FrameReader(self._max_frame_bytes)
        self._pending.clear()
        return self

    def send(self, message: bytes) -> bytes:
        """Send one message and return the payload of the ACK frame that answers it."""
        self.send_raw(encode_frame(message))
        return self.receive()

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are — for tests that need broken framing."""
        self._socket().sendall(data)

    def receive(self) -> bytes:
        """The next frame's payload; raises FramingError on a malformed reply."""
        sock = self._socket()
        while not self._pending:
            data = sock.recv(_READ_CHUNK)
            events = self._reader.feed(data) if data else self._reader.close()
            for event in events:
                if isinstance(event, Frame):
                    self._pending.append(event.payload)
                elif isinstance(event, FrameProblem) and event.code is not ProblemCode.JUNK_BEFORE_START:
                    raise FramingError(f"malformed reply: {event.code}")
            if not data and not self._pending:
                raise ConnectionError("connection closed before a reply arrived")
        return self._pending.popleft()

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("not connected")
        return self._sock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
