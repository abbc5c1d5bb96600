"""Socket.IO on the HTTP port: authenticated connections, live events, and replay.

CONTRACTS §1: clients pass ``auth={"token": key}``; a missing or wrong key is refused at
``connect`` when auth is on. CONTRACTS §7: every event is emitted under its type name
(``job_queued``, …) with ``seq`` and ``ts``. A client that was away sends
``subscribe {"since": <last seq it saw>}`` and gets what it missed as one ``events_replay``
emit ``{"events": [...], "latest_seq": n, "more": bool}``; with ``more`` true it asks again
from the last replayed ``seq``. Live events may arrive before the replay or repeat one of it,
so a client keeps the highest ``seq`` it has handled and drops anything at or below it.

Each event reaches only the keys allowed to see it (:mod:`apportion.ownership`): at
``connect`` a client joins the room of its key's account (an operator or admin key: the room
of every account); an account's event is emitted to that account's room and the every-account
room, a fleet-wide event (no account) to every client. A replay is filtered the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import socketio
from aiohttp import web

from apportion.errors import ApportionError, InvalidRequest, Unauthorized
from apportion.server.auth import ANONYMOUS_ADMIN, HOW_TO_AUTH, Principal, authenticate
from apportion.server.events import EventLog, audience_of
from apportion.server.keys import KeyStore
from apportion.server.limits import mark_authenticated

log = logging.getLogger(__name__)

SOCKETIO_PATH = "socket.io"
REPLAY_EVENT = "events_replay"
REPLAY_LIMIT = 1000
EVERY_ACCOUNT_ROOM = "accounts:*"


def account_room(account: str) -> str:
    """The Socket.IO room of the clients whose keys act for ``account``."""
    return f"account:{account}"


def create_socketio(
    keys: KeyStore,
    *,
    auth_enabled: bool,
    events: EventLog | None = None,
    redis_url: str | None = None,
) -> socketio.AsyncServer:
    """Build the server's Socket.IO ``AsyncServer`` (called once by the app, before
    :func:`attach`). ``connect`` authenticates ``auth["token"]`` (or an ``Authorization``
    header) and keeps the principal in the session; a refusal raises
    ``socketio.exceptions.ConnectionRefusedError("Unauthorized: …")``: the client's ``connect``
    raises and its ``connect_error`` handler gets ``{"message": "Unauthorized: …",
    "data": {"code": "Unauthorized"}}``.
    With ``events`` given, clients may ``subscribe`` to replay what they missed. With
    ``redis_url``, every emit reaches the clients of every server on that Redis
    (python-socketio's Redis manager), so a client sees the events of work done through others.
    Browsers are held to the same origin as the page (python-engineio's default)."""
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=None if redis_url is None else _redis_manager(redis_url),
        cors_allowed_origins=None,  # same origin only
        logger=False,
        engineio_logger=False,
    )

    async def connect(sid: str, environ: Mapping[str, Any], auth: Any = None) -> None:
        if auth_enabled:
            who = await _authenticate(keys, environ, auth)
            request = environ.get("aiohttp.request")
            if isinstance(request, web.Request):
                mark_authenticated(request)  # its connection keeps its place (limits.py)
        else:
            who = ANONYMOUS_ADMIN
        await sio.save_session(sid, {"principal": who})
        only = who.actor.only_account
        await sio.enter_room(sid, EVERY_ACCOUNT_ROOM if only is None else account_room(only))
        log.debug("socket.io client %s connected as %s", sid, who.key_id)

    async def subscribe(sid: str, data: Any = None) -> dict[str, Any]:
        if events is None:
            return InvalidRequest("this server keeps no event log to replay from").envelope()
        try:
            since, limit = _subscribe_args(data)
            who: Principal = (await sio.get_session(sid))["principal"]
            missed = await events.since(since, limit=limit + 1, only_account=who.actor.only_account)
            latest = await events.latest_seq()
        except ApportionError as exc:
            return exc.envelope()
        more = len(missed) > limit
        missed = missed[:limit]
        await sio.emit(
            REPLAY_EVENT,
            {"events": missed, "latest_seq": latest, "more": more},
            to=sid,
        )
        return {"success": True, "count": len(missed), "more": more}

    sio.on("connect", connect)
    sio.on("subscribe", subscribe)
    return sio


async def _authenticate(keys: KeyStore, environ: Mapping[str, Any], auth: Any) -> Principal:
    token = auth.get("token") if isinstance(auth, dict) else None
    if isinstance(token, str) and token:
        header: str | None = f"Bearer {token}"
    else:
        header = environ.get("HTTP_AUTHORIZATION")
        if not header:
            raise _refusal("connect with auth={'token': '<key>'}; " + HOW_TO_AUTH)
    try:
        return await authenticate(keys, header)
    except Unauthorized as exc:
        raise _refusal(exc.message) from None


def _refusal(reason: str) -> Exception:
    """python-socketio's refusal, whose message (and data) reach the client's
    ``connect_error`` handler; the builtin ``ConnectionRefusedError`` would lose them."""
    error: Exception = socketio.exceptions.ConnectionRefusedError(
        f"Unauthorized: {reason}", {"code": "Unauthorized"}
    )
    return error


def _subscribe_args(data: Any) -> tuple[int, int]:
    """``{"since": seq, "limit"?: n}`` → (since, limit); InvalidRequest naming the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest('subscribe takes an object like {"since": 0}', path="subscribe")
    since = data.get("since", 0)
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise InvalidRequest(
            "subscribe.since must be the last seq you saw (an integer ≥ 0)", path="subscribe.since"
        )
    limit = data.get("limit", REPLAY_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= REPLAY_LIMIT:
        raise InvalidRequest(
            f"subscribe.limit must be an integer from 1 to {REPLAY_LIMIT}", path="subscribe.limit"
        )
    return since, limit


REDIS_CONNECT_TIMEOUT_SECONDS = 2.0
"""How long a connection to Redis may take: an emit waits for its publication (and holds the
servers' turn to publish meanwhile), so a Redis that does not answer must fail fast — the
event is stored and reaches the server's own clients either way (docs/operations.md)."""


ORDER_WAIT_SECONDS = 0.25
"""How long an emit of this server's event waits for the events before it, published by the
other servers, to be delivered here first (one that never comes — its server died between
commit and publication, Redis is away — delays only the first event after it)."""


def _redis_manager(redis_url: str) -> socketio.AsyncRedisManager:
    return InOrderRedisManager(
        redis_url, redis_options={"socket_connect_timeout": REDIS_CONNECT_TIMEOUT_SECONDS}
    )


class InOrderRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, delivering the event log's events to this server's
    clients in ``seq`` order. The manager delivers another server's emit when its listener
    reads it from Redis, but this server's own at once; the servers' turn orders their commits
    and publications, yet an event committed here just after another server's could reach this
    server's clients first, while the other's still waits unread in the subscription. So this
    server's event ``n`` waits (at most :data:`ORDER_WAIT_SECONDS`) until event ``n - 1`` was
    delivered here. Emits that are not the log's events (no ``seq``) go at once."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._delivered: int | None = None  # the newest seq delivered here (None: none yet)
        self._advanced = asyncio.Condition()  # bound to the running loop on first use

    async def emit(self, event: str, data: Any, *args: Any, **kwargs: Any) -> None:
        seq = _seq_of(data)
        if seq is not None and self._delivered is not None and seq > self._delivered + 1:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ORDER_WAIT_SECONDS), self._advanced:
                    await self._advanced.wait_for(
                        lambda: self._delivered is not None and self._delivered >= seq - 1
                    )
        await super().emit(event, data, *args, **kwargs)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        """Deliver ``message`` to this server's clients (python-socketio calls it for its own
        emits and for those its listener reads from Redis); note its ``seq``."""
        await super()._handle_emit(message)
        seq = _seq_of(message.get("data"))
        if seq is not None:
            self._delivered = seq if self._delivered is None else max(self._delivered, seq)
            async with self._advanced:
                self._advanced.notify_all()


def _seq_of(data: Any) -> int | None:
    """The ``seq`` of an event of the log, as emitted (the event, or a list of it alone)."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict) and "type" in data and isinstance(data.get("seq"), int):
        return int(data["seq"])
    return None


class SocketIOBroadcaster:
    """An :class:`EventLog` sink: emits each event under its type name to the clients allowed
    to see it (``events.add_sink(SocketIOBroadcaster(sio))``; the module docstring)."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio

    async def __call__(self, event: dict[str, Any]) -> None:
        account = audience_of(event)
        if account is None:
            await self._sio.emit(event["type"], event)
        else:
            await self._sio.emit(
                event["type"], event, to=[account_room(account), EVERY_ACCOUNT_ROOM]
            )


def connected_clients(sio: socketio.AsyncServer) -> int:
    """How many clients are connected to this process (default namespace)."""
    return sum(1 for _ in sio.manager.get_participants("/", None))


def attach(sio: socketio.AsyncServer, app: web.Application) -> None:
    """Serve ``sio`` on ``app`` at ``/socket.io/`` (call before the app starts). The auth
    middleware must treat ``/socket.io/`` as public: Socket.IO authenticates in ``connect``."""
    sio.attach(app, socketio_path=SOCKETIO_PATH)
