"""Wiring only: config → store → registry → policies → engine → servers, one lifecycle.

``Server(settings)`` is the whole process: ``await server.start()`` opens the
store, loads the registry, the policies and the holds, binds both ports and
starts the background loops under one task group (:class:`~apportion.background.Background`,
which also runs every admission cycle and every dispatch); ``await server.stop()`` ends the
loops, waits for the cycle and the dispatches under way, then closes the rest in reverse order.
Tests run it on ``127.0.0.1:0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from apportion.accounts import AccountBook
from apportion.adapters.base import Adapter, ClosingAdapter
from apportion.adapters.plugins import AdapterPlugin, load_adapters
from apportion.adapters.slurm.adapter import SlurmAdapter
from apportion.adapters.slurm.usage import SlurmUsageCollector
from apportion.allocation.holds import HoldManager
from apportion.allocation.service import AllocationService
from apportion.background import Background
from apportion.config import Settings
from apportion.errors import ApportionError, Unavailable
from apportion.files import FileBook
from apportion.jobs.boundary import JobBoundary
from apportion.jobs.driver import BackendDriver
from apportion.jobs.duty import JobDuty
from apportion.jobs.identity import JobIdentity
from apportion.jobs.service import JobService
from apportion.policies.catalog import builtin_catalog
from apportion.policies.clients import RegistryServices
from apportion.policies.policy_dir import PolicyDirWatcher
from apportion.policies.runtime import PolicyRuntime
from apportion.policies.sandbox.pool import SandboxLimits, SandboxPool
from apportion.policies.store import PolicyStore
from apportion.registry.collector import LocalCollector, local_cluster_document
from apportion.registry.service import Registry
from apportion.server import (
    dashboard,
    routes_applications,
    routes_core,
    routes_files,
    routes_hpc_queue,
    routes_jobs,
    routes_policies,
    routes_registry,
    routes_rescale,
    routes_resource_manager,
    routes_status,
)
from apportion.server.auth import ANONYMOUS_ADMIN, auth_middleware, check_bind_allowed
from apportion.server.bootstrap import BootstrapKey, ensure_admin_key
from apportion.server.context import CONTEXT, ServerContext
from apportion.server.credentials import default_credentials_path
from apportion.server.events import EMIT_ORDER_LOCK, EventLog, Retention
from apportion.server.forwarding import Forwarder
from apportion.server.http_common import BODY_DEADLINE, BodyDeadline, error_middleware
from apportion.server.keys import KeyStore
from apportion.server.limits import HTTP_GATE, ConnectionGate, accept_error_handler
from apportion.server.routes_status import STATUS, StatusContext
from apportion.server.socketio_server import SocketIOBroadcaster, attach, create_socketio
from apportion.server.telemetry import Telemetry
from apportion.server.ws import AllocationWebSocket
from apportion.store.data_dir import lock_data_dir, unlock_data_dir
from apportion.store.db import Database
from apportion.store.notices import NoticeFeed
from apportion.store.turns import Fence, Leadership, ServerTurn

log = logging.getLogger(__name__)

LINGERING_SECONDS = 1.0  # see the AppRunner below

STOP_GRACE_SECONDS = 10.0

PUBLIC_PATHS = frozenset(
    {"/healthz", "/metrics", "/openapi.json", routes_resource_manager.HEALTH_PATH}
    | dashboard.PUBLIC_PATHS
)  # Socket.IO authenticates itself


class Server:
    """One Apportion server process. ``adapters`` replaces the scheduler adapters this machine
    offers (``local``, and ``slurm`` where its tools exist): tests pass their own."""

    def __init__(
        self, settings: Settings, *, adapters: Mapping[str, Adapter] | None = None
    ) -> None:
        self.settings = settings
        self.bootstrap_key: BootstrapKey | None = None
        self._stack = contextlib.AsyncExitStack()
        self._adapters = adapters
        self.background = Background()
        self.context: ServerContext | None = None
        self.plugins: list[AdapterPlugin] = []  # once started: the adapter plugins found
        self._http_port = 0
        self._ws: AllocationWebSocket | None = None
        self.http_app: web.Application | None = None  # once started: the REST/Socket.IO app
        self.http_gate: ConnectionGate | None = None  # once started: the HTTP port's cap
        self.jobs_identity = ""  # once started: as whom jobs run, in words (docs/security.md)

    # ---------------------------------------------------------------- ports
    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def ws_port(self) -> int:
        assert self._ws is not None
        return self._ws.port

    @property
    def url(self) -> str:
        return f"http://{self._display_host}:{self.http_port}"

    @property
    def advertise_url(self) -> str:
        """Where the other servers sharing the database reach this one (``advertise_url``, or
        the URL it listens at)."""
        return self.settings.advertise_url or self.url

    @property
    def ws_url(self) -> str:
        return f"ws://{self._display_host}:{self.ws_port}"

    @property
    def _display_host(self) -> str:
        host = self.settings.host
        return f"[{host}]" if ":" in host else host

    # ---------------------------------------------------------------- start
    async def start(self) -> None:
        """Start the store, the services, the background loops and the ports. A start that
        fails stops what it had started (its data dir, store and workers are let go) and
        raises: :class:`~apportion.store.data_dir.DataDirInUse` (a ``ValueError``) when another
        server holds the data dir."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        settings = self.settings
        check_bind_allowed(settings.host, auth_enabled=settings.auth)
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(accept_error_handler(previous_handler))
        self._stack.callback(loop.set_exception_handler, previous_handler)
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(settings.data_dir, 0o700)  # the server's alone, also when it existed before
        held = lock_data_dir(settings.data_dir)  # DataDirInUse when another server has it
        self._stack.callback(unlock_data_dir, held)
        db = await Database.open(settings.database_url)
        self._stack.push_async_callback(db.close)

        keys = KeyStore(db)
        accounts = AccountBook(db)
        await accounts.load()
        turn = None
        if settings.redis_url is not None:  # events reach the other servers' clients: in order
            emit_order = ServerTurn(db, EMIT_ORDER_LOCK)
            self._stack.push_async_callback(emit_order.close)
            turn = emit_order.held
        events = EventLog(db, turn=turn)
        self._stack.push_async_callback(events.close)
        retention = Retention(
            max_age_seconds=settings.event_retention_days * 86400,
            max_events=settings.event_retention_count,
        )
        await events.prune_to(retention)
        telemetry = Telemetry()
        events.add_sink(telemetry.observe_event)
        registry = Registry(db, metrics_ttl=settings.metrics_ttl)
        await registry.load()
        registry.add_listener(events.append)

        sandbox = SandboxPool(
            size=settings.sandbox_workers,
            max_size=max(settings.sandbox_workers, settings.sandbox_max_workers),
            limits=SandboxLimits(
                memory_mb=settings.sandbox_memory_mb,
                timeout_seconds=settings.policy_timeout,
                max_answer_bytes=settings.policy_answer_max_bytes,
                max_context_bytes=settings.policy_context_max_bytes,
            ),
            code_roots=(settings.data_dir / "policies",),
            unsandboxed=settings.unsandboxed_policies,
        )
        await sandbox.start()
        self._stack.push_async_callback(sandbox.close)

        policies = PolicyStore(db, settings.data_dir)
        await policies.load(builtin_catalog())
        runtime = PolicyRuntime(db, RegistryServices(registry), sandbox)

        holds = HoldManager(db, registry.fleet)
        await holds.start()
        self._stack.push_async_callback(holds.close)
        leadership = None  # SQLite: this server is the only one
        forwarder = None
        if db.dialect == "postgresql":  # other servers may share it: follow their changes
            feed = NoticeFeed(db)
            registry.follow(feed)
            holds.follow(feed)
            keys.follow(feed)
            accounts.follow(feed)
            policies.follow(feed)
            forwarder = Forwarder(  # the job routes of a server that does not lead
                db,
                own_url=lambda: self.advertise_url,
                runs_jobs=lambda: self.context is not None and self.context.jobs is not None,
            )
            forwarder.follow(feed)
            self._stack.push_async_callback(forwarder.close)
            await feed.start()
            self._stack.push_async_callback(feed.close)
            leadership = Leadership(db)  # started once the HTTP port's URL is known
            self._stack.push_async_callback(leadership.close)

        allocations = AllocationService(
            registry,
            policies,
            runtime,
            holds,
            default_lease_seconds=settings.default_lease_seconds,
            max_lease_seconds=settings.max_lease_seconds,
            observe=telemetry.observe_allocation,
            emit=events.append,
        )
        adapters, self.plugins = load_adapters()
        if self._adapters is not None:
            adapters = dict(self._adapters)
        identity = JobIdentity.of_this_process(
            settings.job_user,
            allow_as_server=settings.allow_jobs_as_server_user,
            os_user_of=accounts.os_user_of,
        )
        self.jobs_identity = identity.describe()
        (log.info if identity.refusal() is None else log.warning)("%s", self.jobs_identity)
        jobs_root = settings.jobs_root_dir
        for adapter in adapters.values():
            if isinstance(adapter, ClosingAdapter):
                self._stack.push_async_callback(adapter.close)
        credentials = settings.credentials_file or default_credentials_path()
        # the local executor's and the stored files' directories: in the data dir, or (with
        # PostgreSQL) in the jobs root, shared by the servers of the database
        own = (settings.local_jobs_dir, settings.files_dir)
        boundary = JobBoundary(
            identity,
            jobs_root,
            (settings.data_dir, credentials.parent),
            private_in_root=tuple(d for d in own if d.is_relative_to(jobs_root)),
        )
        background = self.background

        def job_service(fence: Fence | None) -> JobService:
            driver = BackendDriver(
                registry,
                adapters,
                settings.local_jobs_dir,
                identity=identity,
                jobs_root=jobs_root,
                files=FileBook(db, settings.files_dir, settings.files, fence=fence),
            )
            return JobService(
                db,
                registry,
                allocations,
                holds,
                driver,
                events.append,
                spawn=background.spawn,
                boundary=boundary,
                scheduling=settings.scheduling,
                shares=accounts.shares,
                fence=fence,
            )

        duty = JobDuty(job_service, background, leadership)
        self._stack.push_async_callback(duty.close)  # its pending writes, before the db
        await duty.load()
        self.context = ServerContext(
            settings,
            registry,
            policies,
            runtime,
            holds,
            allocations,
            keys,
            accounts,
            duty,
            adapters,
            tuple(self.plugins),
        )
        telemetry.set_known_policy(lambda uri: _in_store(policies, uri))
        telemetry.set_gpu_source(lambda: _gpu_counts(registry))
        telemetry.set_queue_source(
            lambda: {} if duty.service is None else duty.service.queue_counts()
        )
        sio = create_socketio(
            keys, auth_enabled=settings.auth, events=events, redis_url=settings.redis_url
        )
        events.add_sink(SocketIOBroadcaster(sio))
        status = StatusContext(
            events, telemetry, sio, time.time(), settings.data_dir, role=_role_of(leadership)
        )

        await self._start_http(self.context, status, forwarder)
        if leadership is not None:
            await leadership.start(self.advertise_url)
        self._ws = AllocationWebSocket(
            allocations,
            keys,
            auth_enabled=settings.auth,
            max_message_bytes=settings.max_message_bytes,
            max_in_flight=settings.max_in_flight_per_connection,
            rate_per_second=settings.rate_limit_per_second,
            anonymous=ANONYMOUS_ADMIN,
            gate=ConnectionGate("WebSocket", settings.max_connections),
            header_timeout=settings.header_timeout_seconds,
        )
        await self._ws.start(settings.host, settings.ws_port)
        self._stack.push_async_callback(self._ws.close)
        missing = dashboard.missing_vendor_files()
        if missing:  # a package built without them: say so now, not as a 500 at GET /
            log.warning(
                "the dashboard's browser files are missing (%s): %s/ answers a page saying so;"
                " reinstall Apportion from a wheel built with Node.js and npm (setup.py)",
                ", ".join(missing),
                self.url,
            )

        self.bootstrap_key = await ensure_admin_key(
            settings, keys, url=self.url, ws_url=self.ws_url
        )
        await background.start()
        if settings.local_cluster:
            await registry.upsert_cluster(local_cluster_document())
            background.loop(
                LocalCollector(registry.put_metrics, cluster_id="local").run(), "collector"
            )
        if settings.policy_dir is not None:
            watcher = PolicyDirWatcher(
                settings.policy_dir,
                policies,
                runtime.check,
                events.append,
                interval=settings.policy_dir_poll_seconds,
            )
            await watcher.scan()
            background.loop(watcher.run(), "policy-dir")
        slurm = adapters.get("slurm")
        if isinstance(slurm, SlurmAdapter):
            background.loop(SlurmUsageCollector(registry, slurm).run(), "slurm-usage")
        await duty.start()
        background.loop(self._lease_loop(holds, events, leadership), "leases")
        background.loop(self._staleness_loop(registry), "staleness")
        background.loop(events.prune_forever(retention), "event-prune")

    async def _start_http(
        self, context: ServerContext, status: StatusContext, forwarder: Forwarder | None
    ) -> None:
        settings = self.settings
        app = web.Application(
            middlewares=[
                error_middleware,
                auth_middleware(
                    context.keys,
                    enabled=settings.auth,
                    public_paths=PUBLIC_PATHS,
                    # Socket.IO authenticates in its connect handler; the dashboard's files carry no data
                    public_prefixes=("/socket.io/", *dashboard.PUBLIC_PREFIXES),
                ),
                *([] if forwarder is None else [forwarder.middleware]),
            ],
            client_max_size=max(settings.max_message_bytes, routes_policies.MAX_CODE_BYTES + 2**20),
        )
        app[CONTEXT] = context
        app[BODY_DEADLINE] = BodyDeadline(
            settings.body_timeout_seconds, settings.body_min_bytes_per_second
        )
        app[STATUS] = status
        self.http_gate = ConnectionGate("HTTP", settings.max_connections)
        app[HTTP_GATE] = self.http_gate
        attach(status.sio, app)
        app.add_routes(routes_core.api.routes)
        app.add_routes(routes_jobs.api.routes)
        app.add_routes(routes_applications.api.routes)
        app.add_routes(routes_files.api.routes)
        app.add_routes(routes_rescale.api.routes)
        app.add_routes(routes_hpc_queue.api.routes)
        app.add_routes(routes_resource_manager.api.routes)
        app.add_routes(routes_status.api.routes)
        app.add_routes(routes_registry.api.routes)
        app.add_routes(routes_policies.api.routes)
        app.add_routes(dashboard.api.routes)
        self.http_app = app
        # keepalive_timeout: aiohttp closes a connection with no request under way this long
        # after it connected or was last answered, so it also cuts a request head that trickles.
        # lingering_time: a request answered before its body was read to the end (a refusal,
        # a 408) has the rest of its body read and dropped for at most this long, then its
        # connection is closed. Not 10 s (aiohttp's default: a slow client would hold the
        # connection), not 0: a socket closed with unread bytes is reset, and a reset can
        # destroy the answer before the client has read it (seen as a flaky 408 test)
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=settings.idle_timeout_seconds,
            lingering_time=LINGERING_SECONDS,
        )
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        self._stack.push_async_callback(dashboard.disconnect_socketio_clients, status.sio)
        assert runner.server is not None
        listener = await asyncio.get_running_loop().create_server(
            self.http_gate.wrap(runner.server), settings.host, settings.port
        )
        self._stack.callback(listener.close)  # at stop, before runner.cleanup: no new connections
        self._http_port = int(listener.sockets[0].getsockname()[1])

    # ---------------------------------------------------------------- background
    @staticmethod
    async def _lease_loop(
        holds: HoldManager, events: EventLog, leadership: Leadership | None
    ) -> None:
        """End the leases that are due, every half second: on one server of those sharing a
        PostgreSQL database, the leader (the others hear of it)."""
        while True:
            await asyncio.sleep(0.5)
            if leadership is not None and not leadership.leading:
                continue
            try:
                for hold in await holds.expire_due():
                    await events.append(
                        "allocation_released",
                        {"allocation_id": hold.allocation_id, "reason": "lease expired"},
                    )
            except Unavailable as exc:  # the database is away: the holds stay, tried again
                log.warning("ending leases: %s", exc.message)

    @staticmethod
    async def _staleness_loop(registry: Registry) -> None:
        while True:
            await asyncio.sleep(min(5.0, registry.metrics_ttl / 2))
            registry.refresh_staleness()

    # ---------------------------------------------------------------- stop
    async def stop(self) -> None:
        """End the background loops, wait for the admission cycle and the dispatches under way
        (up to ``STOP_GRACE_SECONDS``, then what is left is cancelled), then close the ports,
        the services and the store."""
        await self.background.stop(STOP_GRACE_SECONDS)
        await self._stack.aclose()


def _role_of(leadership: Leadership | None) -> Callable[[], str]:
    """This server's role for ``/system/status``: ``sole`` (SQLite), ``leader`` or
    ``follower``."""
    if leadership is None:
        return lambda: "sole"
    return lambda: "leader" if leadership.leading else "follower"


def _in_store(policies: PolicyStore, uri: str) -> bool:
    """Whether the policy store holds ``uri`` (the /metrics label filter)."""
    try:
        policies.get(uri)
    except ApportionError:
        return False
    return True


def _gpu_counts(registry: Registry) -> tuple[int, int, int]:
    fleet = registry.fleet
    total = int(fleet.held.size)
    held = int(fleet.held.sum())
    return held, total - held, total


def settle_collector() -> None:
    """Set the garbage collector of a process that serves (``apportion serve``, ``apportion
    demo``), once its server has started: what exists then (modules, the fleet, policies,
    settings) is moved out of the collector's way (``gc.freeze``), and a young collection waits
    for 20,000 new container objects instead of 700. A server makes objects for every job, and
    spent 15–20 % of its CPU collecting at 400 jobs/s; with this, an array of 1,000 short jobs
    runs ~10 % faster (docs/performance.md). Cyclic garbage is freed a little later; nothing
    that exists at the freeze is ever freed by the collector (it is the server's for life)."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


async def serve_forever(settings: Settings, *, on_ready: Any = None) -> None:
    """Start, print the URLs, run until cancelled (Ctrl-C / SIGTERM), then stop cleanly."""
    server = Server(settings)
    await server.start()
    settle_collector()
    try:
        print(f"apportion: REST, Socket.IO and dashboard on {server.url}", file=sys.stderr)
        print(f"apportion: allocation WebSocket on {server.ws_url}", file=sys.stderr)
        print(f"apportion: data in {settings.data_dir} (pid {os.getpid()})", file=sys.stderr)
        print(f"apportion: {server.jobs_identity}", file=sys.stderr)
        if settings.auth:
            link = dashboard.issue_one_time_link(server.url)
            print(f"apportion: dashboard sign-in link (one use, 10 min): {link}", file=sys.stderr)
        if on_ready is not None:
            await on_ready(server)
        await asyncio.Event().wait()
    finally:
        await server.stop()
