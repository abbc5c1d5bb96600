"""The REST transport: one ``aiohttp.ClientSession`` per client, the key in every request,
failures turned into typed errors.

Used by :class:`~apportion.clients.async_client.AsyncApportion`; not public.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from apportion import jsonutil
from apportion.clients.errors import (
    ApportionClientError,
    ServerUnreachableError,
    error_from_envelope,
)

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class RawResponse:
    """A successful answer: status, headers and the undecoded body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON (None for an empty body)."""
        return jsonutil.loads(self.body) if self.body else None

    @property
    def text(self) -> str:
        """The body as UTF-8 text (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")


class RestTransport:
    """Sends requests to ``base_url``; the session is created on first use, in the loop that
    uses it, and closed by :meth:`close`."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    async def close(self) -> None:
        """Close the session (idempotent)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | Sequence[tuple[str, str | int]] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> RawResponse:
        """Send one request; return the answer when its status is below 400. Raises the typed
        error of the server's envelope otherwise, and :class:`ServerUnreachableError` (naming
        the URL) when the server cannot be reached or does not answer in time."""
        url = self.base_url + path
        body = jsonutil.dumps(json) if json is not None else data
        extra = dict(headers or {})
        if json is not None:
            extra.setdefault("Content-Type", "application/json")
        # a body streamed from a file may take longer than one answer: wait per chunk instead
        options: dict[str, Any] = {}
        if isinstance(data, aiohttp.FormData):
            options["timeout"] = aiohttp.ClientTimeout(total=None, sock_read=self._timeout)
        try:
            async with self._open().request(
                method, url, data=body, params=params, headers=extra, **options
            ) as response:
                raw = await response.read()
                status, answer_headers = response.status, dict(response.headers)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        if status >= 400:
            raise _error_from(raw, status)
        return RawResponse(status, answer_headers, raw)

    def _unreachable(self, exc: BaseException) -> ServerUnreachableError:
        reason = str(exc) or type(exc).__name__
        return ServerUnreachableError(
            f"cannot reach the Apportion server at {self.base_url}: {reason}; "
            "is it running (apportion serve)? check the server URL you gave, or"
            " APPORTION_URL, or the credentials profile",
            code="Unreachable",
            details={"url": self.base_url},
        )

    async def download(
        self, path: str, destination: Path, *, headers: Mapping[str, str] | None = None
    ) -> RawResponse:
        """GET ``path`` and stream the answer's body into ``destination`` (written whole or
        not at all: a partial download is removed); the answer without its body. The
        transport's timeout is then the longest wait for the next chunk, not the total."""
        url = self.base_url + path
        partial = destination.with_name(destination.name + ".part")
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self._timeout)
        try:
            async with self._open().get(url, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    raise await _error_of(response)
                with await asyncio.to_thread(partial.open, "wb") as out:
                    async for chunk in response.content.iter_chunked(256 * 1024):
                        await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(partial.replace, destination)
                return RawResponse(response.status, dict(response.headers), b"")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        finally:
            await asyncio.to_thread(partial.unlink, missing_ok=True)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | Sequence[tuple[str, str | int]] | None = None,
    ) -> Any:
        """:meth:`send` and decode the JSON answer."""
        return (await self.send(method, path, json=json, params=params)).json()

    async def data(self, method: str, path: str, *, json: Any = None) -> Any:
        """:meth:`call` for routes answering ``{"success": true, "data": …}``: the ``data``."""
        answer = await self.call(method, path, json=json)
        return answer.get("data") if isinstance(answer, dict) else answer


def _error_from(raw: bytes, status: int) -> ApportionClientError:
    """The typed error of an answer of ``status`` ≥ 400 whose body is ``raw``."""
    try:
        decoded: Any = jsonutil.loads(raw)
    except Exception:
        decoded = raw.decode("utf-8", errors="replace")
    return error_from_envelope(decoded, status=status)


async def _error_of(response: aiohttp.ClientResponse) -> ApportionClientError:
    return _error_from(await response.read(), response.status)
