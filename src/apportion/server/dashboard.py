"""The web dashboard on the HTTP port: its page, static files, sign-in and the fleet read API.

Wiring (``app.py``): ``app.add_routes(dashboard.api.routes)``; the auth middleware treats
:data:`PUBLIC_PATHS` and :data:`PUBLIC_PREFIXES` as public (the page and its files carry no data;
everything with data needs a key); ``serve`` prints :func:`issue_one_time_link` at start.

Sign-in, as Jupyter does: :func:`issue_one_time_link` mints a random single-use token (kept in
this process's memory for :data:`ONE_TIME_TTL_SECONDS`) and returns ``<base>/#login=<token>``.
A URL fragment never reaches the server or its logs; the page POSTs the token to
``/auth/one-time``, gets a fresh ``admin`` key named "dashboard session", keeps it in
sessionStorage and removes the fragment from the address bar and history.

The page's JavaScript dependencies (Socket.IO client, uPlot) are copied from npm into
``static/vendor/`` by ``web/copy-vendor.mjs``; without them ``/`` answers a 500 page saying so.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from apportion.errors import NotFound, Unauthorized
from apportion.ownership import Actor
from apportion.server.auth import Principal, Scope, principal_of
from apportion.server.http_common import ctx, json_response
from apportion.server.keys import KeyStore
from apportion.server.routing import ApiRoutes, body_of, query_of
from apportion.server.schemas import (
    DashboardJobs,
    DashboardJobsQuery,
    IssuedKey,
    OneTimeToken,
    Whoami,
)
from apportion.timefmt import iso_utc

STATIC_DIR = Path(__file__).parent / "static"
VENDOR_FILES = ("socket.io.min.js", "uPlot.iife.min.js", "uPlot.min.css")
PUBLIC_PATHS = frozenset({"/", "/auth/one-time"})
PUBLIC_PREFIXES = ("/static/",)
ONE_TIME_TTL_SECONDS = 600.0
BUSY_UTIL_PERCENT = 50.0
SESSION_KEY_NAME = "dashboard session"
GPU_FIELDS = ("index", "model", "memory_mb", "state", "util", "free_mb", "holder")

_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".map": "application/json",
    ".LICENSE": "text/plain",
}

api = ApiRoutes("dashboard")


class OneTimeTokens:
    """Single-use sign-in tokens in memory: :meth:`issue` at ``serve`` start, :meth:`consume`
    once by ``POST /auth/one-time``. Thread-safe (``serve`` may print from another thread)."""

    def __init__(
        self, *, ttl_seconds: float = ONE_TIME_TTL_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        """A new random token (256 bits), valid once for ``ttl_seconds``."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._purge()
            self._expiry[token] = self._clock() + self._ttl
        return token

    def consume(self, token: str) -> bool:
        """True exactly once for a token issued here and not yet expired; False otherwise."""
        with self._lock:
            self._purge()
            given = token.encode("utf-8", "surrogatepass")  # bytes: any text compares, no 500
            match = next((t for t in self._expiry if hmac.compare_digest(t.encode(), given)), None)
            if match is None:
                return False
            del self._expiry[match]
            return True

    def outstanding(self) -> bool:
        """Whether a token is live now (else every sign-in is refused, unread)."""
        with self._lock:
            self._purge()
            return bool(self._expiry)

    def _purge(self) -> None:
        now = self._clock()
        for token in [t for t, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[token]


ONE_TIME_TOKENS = OneTimeTokens()
"""The process's token store: ``apportion serve`` runs one server per process."""


def issue_one_time_link(base_url: str, tokens: OneTimeTokens = ONE_TIME_TOKENS) -> str:
    """Called by ``serve`` at start (and by tests): ``http://host:port/#login=<token>``, a link
    that signs one browser in once within 10 minutes. Print it; never log it to a file."""
    return f"{base_url.rstrip('/')}/#login={tokens.issue()}"


def _link_refused() -> Unauthorized:
    """The one answer to a sign-in link that does not work, whatever the reason (none is
    outstanding, it was used, it expired, it is wrong): no oracle of which."""
    return Unauthorized(
        "this sign-in link was already used or has expired (links work once, for 10 "
        "minutes); restart `apportion serve` for a new one, or paste an API key"
    )


def _any_token_outstanding() -> None:
    """Refuse a sign-in before its body is read when no token is live: the public route then
    costs an anonymous client nothing to hold (a slow body would otherwise keep a connection)."""
    if not ONE_TIME_TOKENS.outstanding():
        raise _link_refused()


async def exchange_one_time_token(
    keys: KeyStore, token: str, tokens: OneTimeTokens
) -> dict[str, Any]:
    """A fresh ``admin`` session key for a valid token; :class:`Unauthorized` otherwise."""
    if not token or not tokens.consume(token):
        raise _link_refused()
    issued = await keys.create(SESSION_KEY_NAME, Scope.ADMIN)
    return {
        "api_key": issued.secret,
        "key_id": issued.key_id,
        "name": issued.name,
        "scope": issued.scope.value,
    }


# ---------------------------------------------------------------- page and static files
def missing_vendor_files(static_dir: Path | None = None) -> list[str]:
    """Vendor files the page needs that ``web/copy-vendor.mjs`` has not written."""
    static_dir = STATIC_DIR if static_dir is None else static_dir
    return [name for name in VENDOR_FILES if not (static_dir / "vendor" / name).is_file()]


def _missing_vendor_page(missing: list[str]) -> web.Response:
    names = ", ".join(f"static/vendor/{name}" for name in missing)
    body = (
        "<!doctype html><meta charset=utf-8><title>Apportion: dashboard files missing</title>"
        "<h1>The dashboard's JavaScript dependencies are missing</h1>"
        f"<p>Not found: {names}.</p><p>Run <code>make demo</code> or <code>make test</code>, "
        "which run <code>npm ci</code> and <code>web/copy-vendor.mjs</code> "
        "(by hand: <code>cd web &amp;&amp; npm ci &amp;&amp; node copy-vendor.mjs</code>).</p>"
    )
    return web.Response(text=body, status=500, content_type="text/html")


@api.get(
    "/",
    scope=None,
    public=True,
    response_media="text/html",
    success={200: "the page", 500: "a page saying which vendored files are missing"},
)
async def index(request: web.Request) -> web.StreamResponse:
    """The dashboard page (no key needed: it signs in from the browser)."""
    missing = missing_vendor_files()
    if missing:
        return _missing_vendor_page(missing)
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@api.get(
    "/static/{path:.+}",
    scope=None,
    public=True,
    response_media="application/octet-stream",
    errors=(NotFound,),
)
async def static_file(request: web.Request) -> web.StreamResponse:
    """A file of the dashboard (our HTML, JS, CSS and the vendored libraries)."""
    relative = request.match_info["path"]
    if "\0" in relative:  # no file name holds a NUL; the OS would refuse it
        raise NotFound(f"no dashboard file {relative!r}")
    root = STATIC_DIR.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file() or target.name.startswith("."):
        if relative.startswith("vendor/") and missing_vendor_files():
            return _missing_vendor_page(missing_vendor_files())
        raise NotFound(f"no dashboard file {relative!r}")
    suffix = ".LICENSE" if target.name.endswith(".LICENSE") else target.suffix
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if suffix in _CONTENT_TYPES:
        headers["Content-Type"] = _CONTENT_TYPES[suffix]
    return web.FileResponse(target, headers=headers)


# ---------------------------------------------------------------- sign-in
@api.post(
    "/auth/one-time",
    scope=None,
    public=True,
    body=OneTimeToken,
    response=IssuedKey,
    status=201,
    errors=(Unauthorized,),
    before_body=lambda request: _any_token_outstanding(),
)
async def one_time_sign_in(request: web.Request) -> web.Response:
    """Exchange a one-time sign-in token for a new admin session key (shown once)."""
    token = body_of(request, OneTimeToken).token
    result = await exchange_one_time_token(
        ctx(request).keys, token if isinstance(token, str) else "", ONE_TIME_TOKENS
    )
    return json_response(result, status=201)


@api.get("/auth/whoami", scope=None, response=Whoami)
async def whoami(request: web.Request) -> web.Response:
    """The calling key: {key_id, name, scope, account, user, auth_enabled}."""
    who = principal_of(request)
    return json_response(
        {
            "key_id": who.key_id,
            "name": who.name,
            "scope": who.scope.value,
            "account": who.account,
            "user": who.actor.user,
            "auth_enabled": ctx(request).settings.auth,
        }
    )


# ---------------------------------------------------------------- fleet
def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 1)


def fleet_snapshot(context: Any, who: Actor) -> dict[str, Any]:
    """Every cluster, node and GPU with its state, for ``GET /fleet`` (a ServerContext) as
    ``who`` may see it.

    A GPU's state, first match wins: ``job`` (held by a running job's hold), ``held`` (held by
    an allocation), ``stale`` (its cluster's metrics are past the TTL), ``busy`` (metrics say
    cudaUtilization ≥ 50), else ``free``. GPUs are rows ``[index, model, memory_mb, state,
    util, free_mb, holder]`` (``gpu_fields``); ``holder`` is the job id or allocation id when
    ``who`` may see that hold (apportion.ownership), else None: every key sees that a GPU is
    taken, only the account's keys (and operators) see by what."""
    registry, holds = context.registry, context.holds
    job_of: dict[str, str] = {}
    if context.jobs is not None:
        for job in context.jobs.jobs.jobs.values():
            if job.allocation_id is not None and not job.status.finished:
                job_of[job.allocation_id] = job.job_id
    holder: dict[tuple[str, str, str], tuple[str, str | None]] = {}
    for hold in holds.active():
        # a job's hold: by kind, or by the job record (HoldManager.reserve drops ``kind``)
        is_job = hold.kind == "job" or hold.allocation_id in job_of
        name = job_of.get(hold.allocation_id, hold.allocation_id) if is_job else hold.allocation_id
        shown = name if who.may_see(hold.owner) else None
        for key in hold.gpu_keys:
            holder[key] = ("job" if is_job else "held", shown)
    fleet = registry.fleet
    with fleet.lock:
        s = fleet.structure
        models = s.model_names
        gpu_model = s.gpu_model.tolist()
        gpu_mem = s.gpu_memory_mb.tolist()
        util = fleet.metric_util.tolist()
        free = fleet.metric_free_mb.tolist()
        starts = s.node_gpu_start.tolist()
        counts = s.node_gpu_count.tolist()
        node_cluster = s.node_cluster.tolist()
        node_ids, node_docs, cluster_ids = s.node_ids, s.node_docs, s.cluster_ids
    totals = dict.fromkeys(("gpus", "free", "held", "job", "busy", "stale"), 0)
    out: dict[str, dict[str, Any]] = {}
    for cid in cluster_ids:
        doc = registry.get_cluster(cid)
        metrics = registry.get_metrics_or_none(cid)
        out[cid] = {
            "id": cid,
            "region": doc.get("regionId"),
            "status": doc.get("status"),
            "metrics_stale": None if metrics is None else bool(metrics.get("stale")),
            "counts": dict.fromkeys(totals, 0),
            "nodes": [],
        }
    for row, node_id in enumerate(node_ids):
        cluster = out[cluster_ids[node_cluster[row]]]
        stale = cluster["metrics_stale"] is True
        gpus = []
        for g in range(starts[row], starts[row] + counts[row]):
            index = g - starts[row]
            state, by = holder.get((cluster["id"], node_id, str(index)), ("", None))
            u = util[g]
            if not state:
                state = "stale" if stale else "busy" if u >= BUSY_UTIL_PERCENT else "free"
            gpus.append([index, models[gpu_model[g]], gpu_mem[g], state, _number(u), _number(free[g]), by])  # fmt: skip
            for bucket in (cluster["counts"], totals):
                bucket["gpus"] += 1
                bucket[state] += 1
        labels = node_docs[row].get("labels") or {}
        cluster["nodes"].append({"id": node_id, "labels": labels, "gpus": gpus})
    return {
        "ts": iso_utc(time.time()),
        "gpu_fields": list(GPU_FIELDS),
        "busy_util_percent": BUSY_UTIL_PERCENT,
        "totals": totals,
        "clusters": [out[cid] for cid in sorted(out)],
    }


@api.get("/fleet", scope=Scope.READ, response=dict[str, Any], on_leader=True)
async def fleet(request: web.Request) -> web.Response:
    """Every cluster, node and GPU with its state (free, held, job, busy, stale) for the dashboard."""
    return json_response(fleet_snapshot(ctx(request), principal_of(request).actor))


# ---------------------------------------------------------------- jobs
def dashboard_jobs(jobs: Any, who: Principal, *, finished: int) -> list[dict[str, Any]]:
    """Every unfinished job and the newest ``finished`` finished ones, oldest first, without
    their config and decision record (the detail page reads those from ``GET /jobs/{id}``).
    A key sees its own account's jobs, an operator or admin key every account's, as in
    ``GET /jobs`` (:mod:`apportion.ownership`)."""
    actor = who.actor
    mine = [
        j for j in sorted(jobs.jobs.jobs.values(), key=lambda j: j.seq) if actor.may_see(j.owner)
    ]
    done = [j for j in mine if j.status.finished]
    keep = {j.job_id for j in done[max(0, len(done) - finished) :]} if finished else set()
    out = []
    for job in mine:
        if job.status.finished and job.job_id not in keep:
            continue
        record = job.public()
        del record["config"], record["decision"]
        record["seq"], record["workers"] = job.seq, job.workers
        out.append(record)
    return out


@api.get(
    "/dashboard/jobs",
    scope=Scope.READ,
    query=DashboardJobsQuery,
    response=DashboardJobs,
    on_leader=True,
)
async def jobs_overview(request: web.Request) -> web.Response:
    """Unfinished jobs and the newest finished ones (?finished=200), light records."""
    who = principal_of(request)
    finished = query_of(request, DashboardJobsQuery).finished
    service = ctx(request).jobs
    records = [] if service is None else dashboard_jobs(service, who, finished=finished)
    return json_response({"jobs": records})


async def disconnect_socketio_clients(sio: Any) -> None:
    """Close every Socket.IO connection (call at stop, just before the HTTP runner's cleanup).

    Without it an open browser tab keeps its WebSocket, and the stop waits out Engine.IO's ping
    timeout (45 s): the Socket.IO client ignores Engine.IO's CLOSE packet on a WebSocket, so the
    server must end the transport itself. A ``None`` in an Engine.IO socket's queue ends its
    writer, which closes the WebSocket. Pages reconnect by themselves and resync from their
    last ``seq``."""
    for eio_socket in list(sio.eio.sockets.values()):
        await eio_socket.close(wait=False)
        eio_socket.queue.put_nowait(None)
    sio.eio.sockets.clear()
