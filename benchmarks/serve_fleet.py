"""The server under test for ``allocation.py``, in its own process.

Builds :class:`~apportion.config.Settings` (loopback, ephemeral ports, the given admin key,
its data and jobs directories in a temporary directory — or under ``--root``, left in place
for the caller — every other option at its default), starts
:class:`~apportion.app.Server`, registers the synthetic fleet in-process
(``registry.upsert_cluster``), prints ``{"url", "ws_url", "nodes", "gpus", "clusters"}`` on
one line and serves until SIGTERM/SIGINT, then stops the server cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path

import orjson
from synthetic_fleet import GPUS_PER_NODE, fleet_documents

from apportion.app import Server, settle_collector
from apportion.config import Settings


async def serve(nodes: int, per_cluster: int, root: Path) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    settings = Settings(
        host="127.0.0.1",
        port=0,
        ws_port=0,
        data_dir=root / "data",  # the admin key: APPORTION_ADMIN_KEY, never argv
        jobs_root=root / "jobs",  # not /var/lib/apportion/jobs, where a root server's go
        write_credentials=False,
    )
    server = Server(settings)
    await server.start()
    settle_collector()  # as apportion serve does once its server has started
    try:
        assert server.context is not None
        docs = fleet_documents(nodes, per_cluster)
        for doc in docs:
            await server.context.registry.upsert_cluster(doc)
        ready = {
            "url": server.url,
            "ws_url": server.ws_url,
            "nodes": nodes,
            "gpus": nodes * GPUS_PER_NODE,
            "clusters": len(docs),
        }
        sys.stdout.write(orjson.dumps(ready).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--per-cluster", type=int, default=100)
    parser.add_argument(
        "--root", type=Path,
        help="make the data and jobs directories under this one and leave them (default: in a"
        " temporary directory removed at exit)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.root is not None:
        args.root.mkdir(parents=True, exist_ok=True)
        serve_in(args.nodes, args.per_cluster, args.root)
        return 0
    with tempfile.TemporaryDirectory(prefix="apportion-bench-") as tmp:
        serve_in(args.nodes, args.per_cluster, Path(tmp))
    return 0


def serve_in(nodes: int, per_cluster: int, root: Path) -> None:
    """Serve with the data and jobs directories in ``root``, which the jobs' users may pass
    through (0711, as ``/var/lib/apportion``): a root server runs each job as its user, in
    its own directory of the jobs root."""
    root.chmod(0o711)
    asyncio.run(serve(nodes, per_cluster, root))


if __name__ == "__main__":
    sys.exit(main())
