"""The reference server for ``allocation.py``: a bare WebSocket echo on the server's stack.

``websockets`` asyncio server (no compression, the same 1 MiB size limit), each message
decoded and re-encoded with orjson and sent back, one at a time per connection. Runs in its
own process; prints ``{"ws_url": ...}`` on one line once it listens, then serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson
from websockets.asyncio.server import ServerConnection, serve


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(orjson.dumps(orjson.loads(message)).decode())


async def main() -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with serve(echo, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        sys.stdout.write(orjson.dumps({"ws_url": f"ws://127.0.0.1:{port}"}).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
