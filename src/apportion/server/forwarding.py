"""The job routes of a server that does not run the jobs: forwarded to the one that does.

Of the servers sharing a PostgreSQL database, only the leader runs the jobs
(:mod:`apportion.jobs.duty`); every server answers every route all the same. A route declared
``on_leader`` (the job, queue, application and file routes, and the dashboard's job views) that
reaches a server not running the jobs is sent on to the leader's ``advertise_url`` — its method,
path, query, body (streamed) and the client's own ``Authorization`` — and the leader's answer is
streamed back as it comes (status, body and the headers a client reads). The key is checked by
both servers: the follower refuses a bad key itself, and the leader applies its scope.

The leader's address is the ``leadership`` row's, read at start and again at each notice of
its rewrite (a takeover, a step-down: :data:`~apportion.store.turns.LEADER_TOPIC`), not per
request. When no server can run them (no leader yet, a takeover under way, or the leader
unreachable)
the answer is ``503 Unavailable`` with ``retryable``: a client retries and reaches the next
leader. A forwarded request is never forwarded again (no loops between servers that both think
the other leads).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from yarl import URL

from apportion.errors import Unavailable
from apportion.server.http_common import Handler
from apportion.server.routing import spec_of
from apportion.store.db import Database
from apportion.store.notices import Notice, NoticeFeed
from apportion.store.turns import LEADER_TOPIC, leader_of

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Apportion-Forwarded-By"
"""Set on a forwarded request: the URL of the server that forwarded it."""

SENT_HEADERS = ("Authorization", "Content-Type", "Accept", "Range", "X-Request-Id")
"""The client's headers that go with a forwarded request (not its Host, cookies, hops)."""

NOT_RETURNED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)
"""The leader's answer's headers that stay behind: a connection's own (RFC 9110 §7.6.1), and
those this server sets itself; every other goes back to the client (``Content-Range``,
``X-Content-Type-Options``, ``WWW-Authenticate``…)."""

CONNECT_TIMEOUT_SECONDS = 5.0
CHUNK_BYTES = 64 * 1024


class Forwarder:
    """Forwards the ``on_leader`` routes while ``runs_jobs()`` is false (see the module):
    :meth:`follow` before the feed starts; :attr:`middleware` goes after the auth middleware;
    :meth:`close` at stop. ``own_url``: this server's ``advertise_url`` (known once its port is
    bound)."""

    def __init__(
        self, db: Database, *, own_url: Callable[[], str], runs_jobs: Callable[[], bool]
    ) -> None:
        self._db = db
        self._own_url = own_url
        self._runs_jobs = runs_jobs
        self._session: aiohttp.ClientSession | None = None
        self._leader_url = ""  # the leadership row's: empty when none leads

    def follow(self, feed: NoticeFeed) -> None:
        """Read the leader's address on every connection of ``feed`` and at each notice of a
        new leader, or of one stepping down."""
        feed.on(LEADER_TOPIC, self._heard, self._read)

    async def _heard(self, _notice: Notice) -> None:
        await self._read()

    async def _read(self) -> None:
        leader = await leader_of(self._db)
        self._leader_url = "" if leader is None else leader.url

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_of(request.match_info.handler)
        if spec is None or not spec.on_leader or self._runs_jobs():
            return await handler(request)
        if FORWARDED_HEADER in request.headers:
            raise _unavailable("the server it was forwarded to does not run them (a takeover)")
        leader_url = self._leader_url
        if leader_url in ("", self._own_url()):
            raise _unavailable("no server runs them yet (one is taking the lead)")
        return await self._forward(request, leader_url)

    async def close(self) -> None:
        """Close the connections to the leader."""
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request, leader_url: str) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS),
                auto_decompress=False,
            )
        headers = {n: request.headers[n] for n in SENT_HEADERS if n in request.headers}
        headers[FORWARDED_HEADER] = self._own_url()
        body = request.content.iter_chunked(CHUNK_BYTES) if request.body_exists else None
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                request.method,
                URL(leader_url + request.raw_path, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as answer:
                response = web.StreamResponse(
                    status=answer.status,
                    headers=[
                        (name, value)
                        for name, value in answer.headers.items()
                        if name.lower() not in NOT_RETURNED
                    ],
                )
                response.content_length = answer.content_length  # else sent chunked
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(CHUNK_BYTES):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("forwarding %s %s to %s: %s", request.method, request.path, leader_url, exc)
            if response is not None:  # its head was sent: the client sees the body cut short
                return response
            raise _unavailable(f"the server that runs them ({leader_url}) did not answer") from exc


def _unavailable(why: str) -> Unavailable:
    return Unavailable(
        f"this route is answered by the server that runs the jobs, and {why}: retry in a few"
        " seconds",
        details={"retryable": True},
    )
