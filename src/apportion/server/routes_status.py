"""REST routes of seed 001's status side: ``/events``, ``/metrics``, ``/resources``,
``/system/status``.

Handlers read :data:`STATUS` (a :class:`StatusContext` the app sets with
``app[STATUS] = StatusContext(...)``). ``/metrics`` is public (list it in the auth middleware's
public paths); the others need a ``read`` key.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed
import socketio
from aiohttp import web

from apportion import __version__
from apportion.server.auth import Scope, principal_of
from apportion.server.events import EventLog
from apportion.server.http_common import json_response
from apportion.server.routing import ApiRoutes, query_of
from apportion.server.schemas import EventsPage, EventsQuery, SystemStatus
from apportion.server.socketio_server import connected_clients
from apportion.server.telemetry import Telemetry
from apportion.timefmt import iso_utc

MB = 1024 * 1024
CPU_SAMPLE_SECONDS = 0.1


@dataclass(frozen=True)
class StatusContext:
    """What the status routes need. ``started_at`` is the server's start in UNIX seconds;
    ``data_dir`` is the directory whose disk ``/resources`` reports."""

    events: EventLog
    telemetry: Telemetry
    sio: socketio.AsyncServer
    started_at: float
    data_dir: Path = field(default_factory=Path.cwd)
    role: Callable[[], str] = lambda: "sole"
    """``sole`` (SQLite: the only server), ``leader`` or ``follower`` (of the servers sharing a
    PostgreSQL database)."""


STATUS: web.AppKey[StatusContext] = web.AppKey("apportion_status", StatusContext)

api = ApiRoutes("status")


@api.get("/events", scope=Scope.READ, query=EventsQuery, response=EventsPage)
async def list_events(request: web.Request) -> web.Response:
    """Events after ``since`` that the key may see (apportion.ownership), oldest first."""
    status = request.app[STATUS]
    who = principal_of(request).actor
    query = query_of(request, EventsQuery)
    since, limit = query.since, query.limit
    types = {t for raw in query.type for t in raw.split(",") if t}
    latest = await status.events.latest_seq()
    data = await status.events.since(
        since, limit=limit, types=types or None, only_account=who.only_account
    )
    last = data[-1]["seq"] if data else since
    # Everything up to ``latest`` was scanned unless the page filled up.
    next_since = last if len(data) == limit else max(last, latest)
    return json_response(
        {
            "success": True,
            "data": data,
            "latest_seq": max(latest, last),
            "next_since": next_since,
        }
    )


@api.get("/metrics", scope=None, public=True, response_media="text/plain")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics in the text exposition format (no key needed)."""
    telemetry = request.app[STATUS].telemetry  # gauges read here, the text made in a thread
    telemetry.refresh()
    body, content_type = await asyncio.to_thread(telemetry.exposition)
    return web.Response(body=body, headers={"Content-Type": content_type})


def host_resources(data_dir: Path) -> dict[str, Any]:
    """A blocking psutil snapshot of this host (run it off the event loop)."""
    memory = psutil.virtual_memory()
    target = data_dir if data_dir.exists() else Path(os.path.abspath(os.sep))
    disk = psutil.disk_usage(str(target))
    load1, load5, load15 = psutil.getloadavg()
    return {
        "timestamp": iso_utc(time.time()),
        "cpu_percent": psutil.cpu_percent(interval=CPU_SAMPLE_SECONDS),
        "cpu_count": psutil.cpu_count(logical=True) or 0,
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total_mb": round(memory.total / MB, 1),
        "memory_available_mb": round(memory.available / MB, 1),
        "memory_used_mb": round((memory.total - memory.available) / MB, 1),
        "memory_percent": memory.percent,
        "memory_free_gb": round(memory.available / 1024 / MB, 2),  # seed 001's key
        "disk": {
            "path": str(target),
            "total_mb": round(disk.total / MB, 1),
            "used_mb": round(disk.used / MB, 1),
            "free_mb": round(disk.free / MB, 1),
            "percent": disk.percent,
        },
        "load_average": {"1m": load1, "5m": load5, "15m": load15},
    }


@api.get("/resources", scope=Scope.READ, response=dict[str, Any])
async def resources(request: web.Request) -> web.Response:
    """Host telemetry: CPU, memory and data-dir disk (MB), load average (seed 001)."""
    data_dir = request.app[STATUS].data_dir
    return json_response(await asyncio.to_thread(host_resources, data_dir))


@api.get("/system/status", scope=Scope.READ, response=SystemStatus)
async def system_status(request: web.Request) -> web.Response:
    """Server status: version, uptime, Socket.IO clients, newest event seq, role."""
    status = request.app[STATUS]
    return json_response(
        {
            "status": "ok",
            "version": __version__,
            "started_at": iso_utc(status.started_at),
            "uptime_seconds": round(max(0.0, time.time() - status.started_at), 3),
            "socketio_clients": connected_clients(status.sio),
            "latest_event_seq": await status.events.latest_seq(),
            "role": status.role(),
        }
    )
