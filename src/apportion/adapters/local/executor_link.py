"""The adapter's connection to the executor of one jobs directory (:mod:`.executor`).

:class:`ExecutorLink` connects to ``<jobs dir>/executor.sock``; when nothing answers there it
starts the executor — ``python -I -S executor.py <jobs dir>``, in its own session (it outlives
the server), with the minimal job environment (never the server's: it holds the admin key) —
and connects once it listens. One connection per link, kept open: requests go out in order and
their answers come back in that order; between them come the executor's unasked events (a
worker's end), handed to the link's ``on_event``, and when the connection is lost ``on_event``
is told ``None`` (whatever the executor watched may have changed). Raises :class:`ExecutorGone` when the executor closed
the connection before it answered, :class:`~apportion.adapters.base.AdapterError` when it
could not be started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apportion.adapters.base import AdapterError
from apportion.adapters.local import executor as ex
from apportion.adapters.local.workers import owned_process

# The executor is one standard-library file, run as a script: isolated (-I: no user site,
# no PYTHON* variables, no cwd on sys.path) and without site-packages (-S), which it does not
# need.
EXECUTOR_SCRIPT = str(Path(ex.__file__).resolve())
EXECUTOR_FLAGS = ("-I", "-S")
START_TIMEOUT = 15.0  # seconds for a new executor to listen
EXIT_WAIT = 5.0  # seconds :meth:`ExecutorLink.close` waits for an idle executor to exit
ANSWER_LIMIT = 1 << 20  # bytes of one answer at most


class ExecutorGone(Exception):
    """The executor closed the connection (it died, or was exiting) before it answered."""


class ExecutorLink:
    """The connection to the executor of ``jobs_dir`` (used on one event loop at a time)."""

    def __init__(
        self,
        jobs_dir: Path,
        environment: dict[str, str],
        on_event: Callable[[dict[str, Any] | None], None] = lambda _: None,
    ) -> None:
        """``environment``: the executor's whole environment; ``on_event``: called on the event
        loop with each event the executor sends, and with None when the connection is lost."""
        self.jobs_dir = jobs_dir
        self._on_event = on_event
        self._environment = environment
        self._connecting = asyncio.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._waiting: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._started: list[subprocess.Popen[bytes]] = []  # executors this link started

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` and return the executor's answer to it."""
        writer = await self._connected()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append(answer)  # no await before the write: answers keep the order
        writer.write(json.dumps(message).encode() + b"\n")
        return await answer

    async def close(self) -> None:
        """Close the connection; an executor left with no command to watch exits then, and
        this waits (up to :data:`EXIT_WAIT`) until it has."""
        if self._writer is None:
            self._reap()
            return
        try:
            status = await self.request({"op": "status"})
        except ExecutorGone:
            status = {}
        self._drop_connection(lost=False)
        if status.get("running") == 0:
            deadline = time.monotonic() + EXIT_WAIT
            while owned_process(status.get("pid"), status.get("started_at")) is not None:
                self._reap()
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
        self._reap()

    # ---- connecting -----------------------------------------------------------------------

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                await self._connect()
            assert self._writer is not None
            return self._writer

    async def _connect(self) -> None:
        """Connect, starting an executor when none listens; AdapterError after START_TIMEOUT
        or when the one started failed."""
        self._reap()
        deadline = time.monotonic() + START_TIMEOUT
        started: subprocess.Popen[bytes] | None = None
        while True:
            with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
                reader, self._writer = await self._open()
                break
            if started is None or started.poll() is not None:
                if started is not None and started.returncode != ex.ANOTHER_EXECUTOR:
                    raise AdapterError(f"the local executor did not start: {self._log_tail()}")
                started = self._spawn()  # none yet, or another one was just exiting
            if time.monotonic() > deadline:
                raise AdapterError(
                    f"the local executor did not listen within {START_TIMEOUT:g} s:"
                    f" {self._log_tail()}"
                )
            await asyncio.sleep(0.005)
        self._reading = asyncio.create_task(self._read_answers(reader), name="executor-answers")

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        dir_fd = os.open(self.jobs_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return await asyncio.open_unix_connection(ex.socket_address(dir_fd), limit=ANSWER_LIMIT)
        finally:
            os.close(dir_fd)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with os.fdopen(ex.open_private(self.jobs_dir / ex.LOG_NAME), "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                [sys.executable, *EXECUTOR_FLAGS, EXECUTOR_SCRIPT, str(self.jobs_dir)],
                cwd=self.jobs_dir,
                env=self._environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._started.append(proc)
        return proc

    def _log_tail(self) -> str:
        log = self.jobs_dir / ex.LOG_NAME
        return log.read_text(errors="replace")[-500:] if log.exists() else "(no log)"

    def _reap(self) -> None:
        """Reap the executors this link started that have exited (no zombies pile up)."""
        self._started = [proc for proc in self._started if proc.poll() is None]

    # ---- answers --------------------------------------------------------------------------

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                said = json.loads(line)
                if "event" in said:
                    self._on_event(said)
                    continue
                answer = self._waiting.popleft()
                if not answer.done():  # its caller may have been cancelled
                    answer.set_result(said)
        except (OSError, ValueError, IndexError):
            pass
        finally:
            self._drop_connection()

    def _drop_connection(self, *, lost: bool = True) -> None:
        """Close the connection; ``lost``: it was not this link's choice (``on_event(None)``)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if lost:
                self._on_event(None)
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reading = None
        while self._waiting:
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_exception(ExecutorGone("the local executor closed the connection"))
