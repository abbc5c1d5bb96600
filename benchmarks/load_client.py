"""Load generator for ``allocation.py``: N WebSocket connections, each with a window of requests.

Runs in its own process. With several ``--url``, the connections are spread over them in turn
(one load in front of several servers). Every connection keeps ``window`` allocation requests in flight
(closed loop: a worker sends, waits for the answer matched by ``request_id``, sends the next);
latency is measured from just before ``send`` to the moment the answer is decoded. In ``hold``
mode each answered hold is released at once with ``{"type": "release"}`` on the same
connection (sent without waiting; the release answers are checked, not timed), so the fleet's
occupancy stays at most ``clients × window`` GPUs; in ``keep`` mode holds are made and never
released (the fleet fills: the caller sizes the run to its GPUs). After ``warmup`` seconds the run is cut
into ``reps`` back-to-back windows of ``duration`` seconds; one JSON line per window is
printed: ``{"rate", "p50_ms", "p99_ms", "count", "errors", "releases_failed", "client_cpu"}``
(``client_cpu``: this process's CPU seconds per wall second while measuring).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
from websockets.asyncio.client import ClientConnection, connect


def request_body(mode: str) -> dict[str, Any]:
    """The allocation request every worker sends (the seed's fields, CONTRACTS §2)."""
    return {
        "adhoc": mode not in ("hold", "keep"),
        "policy_rule_uri": "binpack:1.0-stable",
        "clusters": [],
        "inputs": {"gpus": 1},
        "filter": {},
        "search": {},
        "parameters": {},
        "settings": {},
        "request_id": "",
    }


class Connection:
    """One socket: a reader task resolves the future waiting on each ``request_id``."""

    def __init__(self, socket: ClientConnection, stats: Stats) -> None:
        self.socket = socket
        self.stats = stats
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count()

    async def read(self) -> None:
        async for message in self.socket:
            answer = orjson.loads(message)
            rid = answer.get("request_id", "")
            future = self.waiting.pop(rid, None)
            if future is not None:
                future.set_result(answer)
            elif rid.startswith("rel-") and not answer.get("success"):
                self.stats.releases_failed += 1

    async def ask(self, body: dict[str, Any]) -> dict[str, Any]:
        rid = f"q-{next(self.ids)}"
        body["request_id"] = rid
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = future
        await self.socket.send(orjson.dumps(body).decode())
        return await future

    async def release(self, allocation_id: str) -> None:
        message = {"type": "release", "allocation_id": allocation_id}
        message["request_id"] = f"rel-{next(self.ids)}"
        await self.socket.send(orjson.dumps(message).decode())


class Stats:
    def __init__(self) -> None:
        self.done: list[float] = []  # completion times
        self.latency: list[float] = []  # seconds, same order
        self.errors: Counter[str] = Counter()
        self.error_done: list[float] = []
        self.releases_failed = 0


async def worker(conn: Connection, mode: str, stop: asyncio.Event) -> None:
    body = request_body(mode)
    stats = conn.stats
    clock = time.perf_counter
    while not stop.is_set():
        started = clock()
        answer = await conn.ask(body)
        finished = clock()
        if "error" not in answer:  # the echo answers with the request itself
            stats.done.append(finished)
            stats.latency.append(finished - started)
            if mode == "hold":
                await conn.release(answer["allocation_id"])
        else:
            stats.errors[answer["error"]["code"]] += 1
            stats.error_done.append(finished)


def summarise(stats: Stats, start: float, duration: float) -> dict[str, Any]:
    done = np.asarray(stats.done)
    latency = np.asarray(stats.latency)
    inside = (done >= start) & (done < start + duration)
    lat_ms = latency[inside] * 1000
    errors = np.asarray(stats.error_done)
    n = int(inside.sum())
    return {
        "rate": n / duration,
        "p50_ms": float(np.percentile(lat_ms, 50)) if n else float("nan"),
        "p99_ms": float(np.percentile(lat_ms, 99)) if n else float("nan"),
        "count": n,
        "errors": int(((errors >= start) & (errors < start + duration)).sum()),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    stats = Stats()
    stop = asyncio.Event()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    urls = itertools.cycle(args.url)  # several servers: connections spread over them in turn
    sockets = [
        await connect(next(urls), additional_headers=headers, compression=None, max_queue=None)
        for _ in range(args.clients)
    ]
    conns = [Connection(s, stats) for s in sockets]
    readers = [asyncio.create_task(c.read()) for c in conns]
    workers = [
        asyncio.create_task(worker(c, args.mode, stop)) for c in conns for _ in range(args.window)
    ]
    t0 = time.perf_counter()
    await asyncio.sleep(args.warmup)
    start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.sleep(args.reps * args.duration)
    cpu = (time.process_time() - cpu_start) / (time.perf_counter() - start)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
    await asyncio.sleep(0.2)  # let the last releases be answered
    for socket in sockets:
        await socket.close()
    for reader in readers:
        reader.cancel()
    results = [summarise(stats, start + k * args.duration, args.duration) for k in range(args.reps)]
    for result in results:
        result["releases_failed"] = stats.releases_failed
        result["error_codes"] = dict(stats.errors)
        result["elapsed"] = time.perf_counter() - t0
        result["client_cpu"] = cpu
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", required=True, action="append", help="ws://127.0.0.1:PORT (repeat: spread)"
    )
    parser.add_argument("--key", default="", help="API key for the Authorization header")
    parser.add_argument("--mode", choices=("adhoc", "hold", "keep", "echo"), default="adhoc")
    parser.add_argument("--clients", type=int, default=1, help="WebSocket connections")
    parser.add_argument("--window", type=int, default=1, help="requests in flight per connection")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per repetition")
    parser.add_argument("--reps", type=int, default=3, help="repetitions")
    args = parser.parse_args(argv)
    for result in asyncio.run(run(args)):
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
