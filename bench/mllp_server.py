"""A listener process for bench/mllp.py: the sidecar's durable intake, or a bare echo.

    python -m bench.mllp_server sidecar [DATABASE_URL]  # MllpServer + DatabaseInbox (SQLite if no URL)
    python -m bench.mllp_server echo  # ceiling: frames in, a fixed ACK out, nothing stored

Prints {"port": N} once listening; runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import tempfile
from pathlib import Path

from connectors.hl7 import AckCode, build_ack, peek_header
from connectors.inbox import DatabaseInbox
from connectors.mllp.framing import Frame, FrameReader, encode_frame
from connectors.mllp.server import MllpConfig, MllpServer
from core.db import Database
from core.settings import Settings
from sidecar.cli import GIL_SWITCH_INTERVAL_S


async def echo_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = FrameReader(1 << 20)
        while data := await reader.read(65536):
            for event in framer.feed(data):
                if isinstance(event, Frame):
                    writer.write(encode_frame(build_ack(peek_header(event.payload), AckCode.AA)))
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def main(kind: str, url: str | None) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as `sidecar serve` does
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "echo":
        server = await echo_server()
        print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
        await stop.wait()
        server.close()
        return
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-mllp-")), database_url=url)
    db = Database(settings)
    db.migrate()
    inbox = DatabaseInbox(db)
    mllp = MllpServer(MllpConfig(port=0, max_connections=64, max_in_flight=512), inbox)
    await mllp.start()
    gc.freeze()  # as `sidecar serve` does
    print(json.dumps({"port": mllp.port}), flush=True)
    await stop.wait()
    committer = mllp._committer
    print(
        json.dumps({"batches": committer.batches, "messages": committer.messages,
                    "commit_ms_avg": round(committer.commit_seconds / max(1, committer.batches) * 1e3, 2)}),
        file=sys.stderr, flush=True,
    )  # fmt: skip
    await mllp.stop()
    inbox.close()
    db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
