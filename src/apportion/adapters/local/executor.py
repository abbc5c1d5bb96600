"""The ``local`` adapter's executor, and the on-disk layout it shares with the adapter.

One executor per jobs directory starts every worker's command, watches it and records its end.
It is run as a script, ``python -I -S <this file> <jobs dir>`` (argv only), by
:class:`~apportion.adapters.local.adapter.LocalAdapter`, in its own session, so it outlives the
server: a restarted server connects to it again. Standard library only and single-threaded: it
starts fast, cannot break on a dependency, and may enter a command's working directory itself
before it spawns it (:func:`_spawn`).

**How a command starts.** With ``posix_spawn`` (a vfork: no copy of the starter's page tables,
no Python before the exec), in a new session, in its working directory, entered as its user
first. A command of the executor's own user (a server that is not root) is spawned by the
executor; a job user's, by that user's **spawner**: a child the executor forks the first time
it starts a command of that user, which gives up every descriptor but its socket, becomes the
user (and so can no longer be read or traced by that user's processes: a process whose user
changed is not dumpable), and spawns each launch it is handed (with its output file's
descriptor: the files are the server's), reaps each command and tells its end
(:func:`_serve_spawner`). A spawner its user's processes kill takes the ends of its running
commands with it: they are stopped and recorded killed, with that reason, and the next start
makes a new one; one they stop is killed once it has taken or answered nothing for
:data:`SPAWNER_WAIT` — it never holds up the executor's other work. A spawner with no command
running for :data:`SPAWNER_IDLE` ends; its user's next start makes a new one.

**Its socket.** ``<jobs dir>/executor.sock`` (0600: the server's user alone can connect), JSON
objects one per line, each answered by one line, in order, on the connection it came on:

* ``{"op": "start", "job_dir": …, "attempt": …, "workers": [launch, …]}`` — start every worker
  of one job; answered once every worker's state file is written: ``{"started": n}``, or
  ``{"error": words}`` when nothing was started (``job.json`` names another attempt, or the
  executor is stopping). A launch is ``{index, command, cwd, env, stdout, walltime, grace,
  run_as}`` (``run_as``: ``{uid, gid, groups}`` or null).
* ``{"op": "status"}`` — ``{"pid": …, "started_at": …, "running": n}``: the executor's own
  pid and start time, and how many commands it watches.

Unasked, every connection is also told ``{"event": "ended", "job_dir": …}`` once a worker's end
is recorded (between answers; an answer never has an ``event`` key), so a server learns of an
end at once instead of at its next look.

Requests are handled in the order they arrived, the older connection's first: what a server
that died had already sent is carried out before a restarted server's first request.
``executor.lock`` (an exclusive ``flock``) keeps a second executor off the directory — it exits
with code 3; ``executor.log`` is its stderr (and its spawners'). It holds a pidfd per running
command of its own user, so it raises its limit of open files to the hard one (its commands get
the limit it was started with); a client that still finds no descriptor left waits in the
backlog while accepting pauses, and a descriptor held in reserve writes the record that finds
none left.

**Each worker's files** in its job's directory — the adapter reads them, the executor writes
them atomically: ``worker-<i>.state.json`` once the command started (pid, pgid, started_at, the
executor's pid and start time) and once it ended (ended_at, return_code or signal, reason,
stopped_by, rusage); ``worker-<i>.out`` its stdout and stderr.

**What stops a command** (SIGTERM to its process group, SIGKILL ``grace`` seconds later; the
state's ``stopped_by`` says why): its ``walltime`` (``"walltime"``); a sibling of its job that
failed, or ``gang.json`` written by the adapter (``"gang"``); SIGTERM/SIGINT to the executor
(``"signal"``; it then starts nothing more and exits when every command has ended). A cancel
is the adapter's own signal to the process group; the end then reads ``stopped_by:
"cancel"`` because ``cancel.json`` exists. When a command has exited (its pidfd is readable,
or its spawner sees it; the zombie still pins its process group) whatever is left of its group
is SIGKILLed, it is reaped with ``wait4`` and its CPU seconds, max RSS and block I/O are
recorded. A worker whose command failed by itself writes ``gang.json`` and its siblings are
stopped.

**When it exits**: when no command runs and no client is connected (an idle executor costs
nothing to start again), or after SIGTERM once its commands have ended; its spawners with it. A
SIGKILLed executor records nothing more (its spawners end with its socket): the adapter then
stops its commands and reports them lost.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import fcntl
import gc
import heapq
import itertools
import json
import os
import resource
import select
import selectors
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

TAG_FILE = "job.json"
CANCEL_FILE = "cancel.json"
GANG_FILE = "gang.json"
USAGE_FILE = "usage.json"
SOCKET_NAME = "executor.sock"
LOCK_NAME = "executor.lock"
LOG_NAME = "executor.log"
ANOTHER_EXECUTOR = 3  # exit code: another executor holds the directory's lock
GANG_TICK = 0.25  # seconds between looks at the running jobs' gang.json
MAX_REQUEST = 64 << 20  # bytes of one request line at most
FIRST_CLIENT_WAIT = 10.0  # seconds a new executor waits for its first client
START_BATCH = 64  # workers started at most before they are recorded (their spawners answer)
ACCEPT_PAUSE = 0.5  # seconds accepting pauses when no descriptor was left for a client
SPAWNER_WAIT = 5.0  # seconds a spawner may take to take a launch or answer it (then killed)
SPAWNER_IDLE = 60.0  # seconds a spawner lives on with no command of its running
SPAWNER_MESSAGE = 4 << 20  # bytes of one launch at most (a command's argv and environment
# fit in 2 MiB, Linux's usual ARG_MAX): the executor's send buffer is made to hold one
SO_SNDBUFFORCE = 32  # Linux's: a send buffer above the system's maximum (root may)


_SETTABLE_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def state_path(job_dir: Path, index: int) -> Path:
    return job_dir / f"worker-{index}.state.json"


def stdout_path(job_dir: Path, index: int) -> Path:
    return job_dir / f"worker-{index}.out"


def socket_address(jobs_dir_fd: int) -> str:
    """The socket's path through an open descriptor of the jobs directory: a Unix socket's path
    may not exceed 107 bytes, a jobs directory's may."""
    return f"/proc/self/fd/{jobs_dir_fd}/{SOCKET_NAME}"


def open_private(path: Path) -> int:
    """``path`` opened for appending, created 0600: a job's files are the server's alone (the
    command writes its output through the descriptors it inherits, not by name)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` to ``path`` so readers see the old or the new file, never half of one
    (encoded in one piece: ``json.dump`` to a file would use the pure-Python encoder)."""
    data = json.dumps(value).encode()
    target = os.fspath(path)
    tmp = f"{os.path.dirname(target)}/.{os.path.basename(target)}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, target)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _disregard(_signum: int, _frame: object) -> None:
    """The executor's handler of the signals it ignores (SIGHUP, SIGPIPE, SIGXFSZ…): nothing
    (a write then fails with its error instead)."""


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Spare:
    """A descriptor held in reserve for the executor's records: a record that finds no other
    one left (each running command of its own user holds a pidfd) is written in its place, so
    a command that runs is never left without its state file."""

    def __init__(self) -> None:
        self.fd = os.open(os.devnull, os.O_RDONLY)

    def write(self, path: Path, value: dict[str, Any]) -> None:
        """:func:`write_json_atomic`, once more with the spare descriptor given up for it when
        no descriptor was left."""
        try:
            write_json_atomic(path, value)
            return
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE) or self.fd < 0:
                raise
        os.close(self.fd)
        try:
            write_json_atomic(path, value)
        finally:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self.fd = -1  # taken meanwhile: none in reserve until a record finds one


class _Job:
    """The workers of one job started by this executor that have not ended yet."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.running: dict[int, _Worker] = {}
        self.gang_failed = False


class _Worker:
    def __init__(
        self, job: _Job, launch: dict[str, Any], state: dict[str, Any], spare: _Spare
    ) -> None:
        self.job = job
        self.spare = spare
        self.index = int(launch["index"])
        self.launch = launch
        self.state = state
        self.pid = 0
        self.pidfd = -1  # watched through it when this executor is its parent
        self.alive = False  # its command runs (recorded started, its end not yet)
        self.grace = float(launch["grace"])
        self.stop_reason: tuple[str, str] | None = None  # (stopped_by, words)
        self.killed = False

    def save(self) -> None:
        """Write the state file; a failure (a full disk) is logged, and the worker then counts
        as lost — the executor goes on for the others."""
        try:
            self.spare.write(state_path(self.job.job_dir, self.index), self.state)
        except OSError as exc:
            print(
                f"cannot record worker {self.index} of {self.job.job_dir}: {exc}", file=sys.stderr
            )

    def stop(self, reason: tuple[str, str], timers: _Timers) -> None:
        """SIGTERM to the command's group now, SIGKILL after its grace (once)."""
        if self.stop_reason is None and self.alive:
            self.stop_reason = reason
            _killpg(self.pid, signal.SIGTERM)
            timers.add(time.monotonic() + self.grace, self, "kill")


class _Spawner:
    """The executor's end of the spawner of one job user (:func:`_serve_spawner`)."""

    def __init__(self, pid: int, uid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.uid = uid  # its user's
        self.sock = sock
        self.workers: dict[int, _Worker] = {}  # by pid: started, their ends not yet told
        self.ended: collections.deque[dict[str, Any]] = collections.deque()  # told, not recorded
        self.gone = False
        self.last_busy = time.monotonic()  # last seen with a command running

    def send(self, message: bytes, fd: int) -> None:
        """Hand it ``message`` with the descriptor ``fd``. Raises :class:`TimeoutError` when it
        took nothing within :data:`SPAWNER_WAIT` (stopped by its user's processes, say), the
        socket's error when it has ended (or the message is too large)."""
        while True:
            try:
                socket.send_fds(self.sock, [message], [fd], socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                if not _ready(self.sock, select.POLLOUT):
                    raise TimeoutError("its spawner took no launch") from None

    def receive(self, *, block: bool) -> dict[str, Any] | None:
        """Its next message, or None once it has ended. Raises :class:`BlockingIOError` when
        none is waiting (``block=False``) and :class:`TimeoutError` when none came within
        :data:`SPAWNER_WAIT` (``block=True``)."""
        if block and not _ready(self.sock, select.POLLIN):
            raise TimeoutError("its spawner did not answer")
        data = self.sock.recv(SPAWNER_MESSAGE, socket.MSG_DONTWAIT)
        if not data:
            return None
        message = json.loads(data)
        return message if isinstance(message, dict) else None


def _too_large() -> OSError:
    return OSError(
        errno.E2BIG,
        f"its command and environment take more than {SPAWNER_MESSAGE >> 20} MiB: make its"
        " environment smaller",
    )


def _stuck(exc: TimeoutError) -> OSError:
    """Why a start failed whose spawner took or answered nothing (``exc`` says which)."""
    return OSError(
        errno.ETIMEDOUT,
        f"{exc} within {SPAWNER_WAIT:g} s (a process of its user stopped it?), so it was killed;"
        " submit the job again (the next start makes a new spawner)",
    )


def _runs_as(pid: int, uid: int) -> bool:
    """Whether process ``pid`` exists and its real user is ``uid``."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"/proc/{pid}/status", "rb") as status,
    ):
        for line in status:
            if line.startswith(b"Uid:"):
                return int(line.split()[1]) == uid
    return False


def _ready(sock: socket.socket, event: int) -> bool:
    """Whether ``sock`` becomes ready for ``event`` within :data:`SPAWNER_WAIT`."""
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(SPAWNER_WAIT * 1000))


class _Timers:
    """Walltimes and grace periods due, earliest first (entries of ended workers are skipped)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Worker, str]] = []
        self._seq = itertools.count()

    def add(self, due: float, worker: _Worker, what: str) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), worker, what))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[tuple[_Worker, str]]:
        due: list[tuple[_Worker, str]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, worker, what = heapq.heappop(self._heap)
            if worker.alive:
                due.append((worker, what))
        return due


class _Client:
    def __init__(self, sock: socket.socket, order: int) -> None:
        self.sock = sock
        self.order = order  # accept order: older connections' requests first
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.closed = False


class _Starting:
    """A start request whose workers were started: each with None (spawned here: it runs),
    the spawner of its user that answers for it, or why it could not be started — until
    :meth:`Executor._started` records them."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.workers: list[tuple[_Worker, OSError | _Spawner | None]] = []


class Executor:
    """The loop: accept clients, carry out their requests, watch the commands' pidfds, fire
    the timers, exit when idle."""

    def __init__(self, jobs_dir: Path, descriptors: tuple[int, int]) -> None:
        """``descriptors``: the limit of open files (soft, hard) the commands get, whatever
        this process raised its own to."""
        self.jobs_dir = jobs_dir
        self.descriptors = descriptors
        self.started_at = time.time()
        self.devnull = os.open(os.devnull, os.O_RDONLY)  # every command's stdin
        self.spare = _Spare()
        self.spawners: dict[tuple[int, int, tuple[int, ...]], _Spawner] = {}  # by job user
        self.selector = selectors.DefaultSelector()
        self.timers = _Timers()
        self.jobs: dict[Path, _Job] = {}
        self.clients: dict[int, _Client] = {}
        self.accepted = itertools.count()
        self.stopping = False
        self.signalled = False  # SIGTERM/SIGINT arrived; the loop then stops every command
        self.next_gang_look = time.monotonic() + GANG_TICK
        self.first_client_deadline = time.monotonic() + FIRST_CLIENT_WAIT
        self.served = False  # a client has connected
        self.accept_again_at: float | None = None  # accepting paused: no descriptor was left

    # ---- the loop -------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        # handled, not ignored: an exec resets a handled signal to its default, an ignored one
        # every command would inherit — SIGHUP, SIGPIPE and SIGXFSZ (ignored by Python itself)
        # and whatever the server was started ignoring (SIGQUIT and SIGINT, behind a "&")
        for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
            if sig == signal.SIGHUP or signal.getsignal(sig) == signal.SIG_IGN:
                signal.signal(sig, _disregard)
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        while self._wanted():
            for key, events in self.selector.select(self._timeout()):
                if key.data == "listener":
                    self._accept(listener)
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                elif isinstance(key.data, _Worker):
                    self._finish(key.data)
                elif isinstance(key.data, _Spawner):
                    self._read_spawner(key.data)
                elif events & selectors.EVENT_WRITE and key.fd in self.clients:
                    self._flush(self.clients[key.fd])
            if self.signalled and not self.stopping:
                self._stop_everything()
            self._read_clients()
            self._handle_requests()
            for spawner in list(self.spawners.values()):  # ends told while starts were answered
                self._record_spawned_ends(spawner)
            self._end_idle_spawners()
            self._fire_timers()
            if self.accept_again_at is not None and time.monotonic() >= self.accept_again_at:
                self.accept_again_at = None
                self.selector.register(listener, selectors.EVENT_READ, "listener")
        if self.accept_again_at is None:
            self.selector.unregister(listener)
        for spawner in self.spawners.values():  # no command runs: each ends at its socket's end
            self._spawner_gone(spawner)

    def _wanted(self) -> bool:
        """Whether to go on: a command runs, or a client is connected (and no SIGTERM came), or
        no client came yet within :data:`FIRST_CLIENT_WAIT` of the start."""
        if self.jobs:
            return True
        if self.stopping:
            return False
        return bool(self.clients) or (
            not self.served and time.monotonic() < self.first_client_deadline
        )

    def _timeout(self) -> float | None:
        due = [self.next_gang_look] if self.jobs else []
        due += [s.last_busy + SPAWNER_IDLE for s in self.spawners.values() if not s.workers]
        if not self.served:
            due.append(self.first_client_deadline)
        timer = self.timers.next_due()
        if timer is not None:
            due.append(timer)
        if self.accept_again_at is not None:
            due.append(self.accept_again_at)
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.signalled = True  # handled by the loop: the wakeup fd ends its select

    def _stop_everything(self) -> None:
        self.stopping = True
        for job in self.jobs.values():
            for worker in job.running.values():
                worker.stop(("signal", "its executor was asked to stop"), self.timers)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        for worker, what in self.timers.pop_due(now):
            if what == "walltime":
                walltime = worker.launch["walltime"]
                worker.stop(("walltime", f"walltime of {walltime:g} s exceeded"), self.timers)
            elif not worker.killed:
                worker.killed = True
                _killpg(worker.pid, signal.SIGKILL)
        if self.jobs and now >= self.next_gang_look:
            self.next_gang_look = now + GANG_TICK
            for job in list(self.jobs.values()):
                self._look_at_gang(job)

    def _look_at_gang(self, job: _Job) -> None:
        """Stop the job's commands when ``gang.json`` (the adapter's) names another worker."""
        gang = read_json(job.job_dir / GANG_FILE)
        if gang is None:
            return
        failed = gang.get("worker")
        for worker in job.running.values():
            if failed == worker.index:
                continue
            if isinstance(failed, int) and failed >= 0:
                reason = ("gang", f"stopped because worker {failed} failed")
            else:
                reason = ("gang", f"stopped: {gang.get('reason') or 'the job failed'}")
            worker.stop(reason, self.timers)

    # ---- clients --------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        """Take a new client; with no descriptor left (EMFILE, ENFILE) the connection waits in
        the backlog and accepting pauses for :data:`ACCEPT_PAUSE` seconds — the listener would
        stay readable, and the loop would spin."""
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            print(
                f"cannot accept a connection ({exc}); again in {ACCEPT_PAUSE:g} s", file=sys.stderr
            )
            self.selector.unregister(listener)
            self.accept_again_at = time.monotonic() + ACCEPT_PAUSE
            return
        sock.setblocking(False)
        self.served = True
        client = _Client(sock, next(self.accepted))
        self.clients[sock.fileno()] = client
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _read_clients(self) -> None:
        """Read what every client has sent (everything a dead server sent is read before
        a new server's requests are handled)."""
        for client in list(self.clients.values()):
            while not client.closed:
                try:
                    data = client.sock.recv(1 << 20)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    data = b""
                if not data or len(client.inbox) > MAX_REQUEST:
                    client.closed = True  # its complete requests are still handled
                    break
                client.inbox += data

    def _handle_requests(self) -> None:
        """Answer every complete request, in order. Consecutive starts are carried out
        together: every worker of up to :data:`START_BATCH` of them is started (spawned, or
        handed to its user's spawner), and only then is each one recorded — a spawner starts
        its commands while the executor hands it the next."""
        for client in sorted(self.clients.values(), key=lambda c: c.order):
            while client.inbox.find(b"\n") >= 0:
                answers: list[dict[str, Any] | _Starting] = []
                started = 0
                while started < START_BATCH and (end := client.inbox.find(b"\n")) >= 0:
                    line = bytes(client.inbox[:end])
                    del client.inbox[: end + 1]
                    answer = self._answer(line)
                    answers.append(answer)
                    if isinstance(answer, _Starting):
                        started += len(answer.workers)
                for answer in answers:
                    if isinstance(answer, _Starting):
                        answer = self._started(answer)
                    client.outbox += json.dumps(answer).encode() + b"\n"
            self._flush(client)

    def _flush(self, client: _Client) -> None:
        while client.outbox and not client.closed:
            try:
                sent = client.sock.send(client.outbox)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                client.closed = True
                break
            del client.outbox[:sent]
        if client.closed:
            self.selector.unregister(client.sock)
            del self.clients[client.sock.fileno()]
            client.sock.close()
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        self.selector.modify(client.sock, events, client)

    def _answer(self, line: bytes) -> dict[str, Any] | _Starting:
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "status":
                running = sum(len(job.running) for job in self.jobs.values())
                return {"pid": os.getpid(), "started_at": self.started_at, "running": running}
            if op == "start":
                return self._start_job(request)
            return {"error": f"unknown op {op!r}"}
        except (ValueError, KeyError, TypeError) as exc:
            return {"error": f"bad request: {exc!r}"}
        except OSError as exc:  # the job's directory cannot be read
            return {"error": str(exc)}

    # ---- workers --------------------------------------------------------------------------

    def _start_job(self, request: dict[str, Any]) -> dict[str, Any] | _Starting:
        """Start every worker of a start request (:meth:`_started` records them), or say why
        nothing was started."""
        if self.stopping:
            return {
                "error": "the local executor is stopping (it was sent SIGTERM) and starts"
                " nothing more; submit the job again once it has exited (the next dispatch"
                " starts a new one)"
            }
        job_dir = Path(request["job_dir"])
        tag = read_json(job_dir / TAG_FILE)
        if tag is None or tag.get("attempt") != request["attempt"]:
            return {"error": "this start was superseded by a later submit; nothing started"}
        job = self.jobs.get(job_dir) or _Job(job_dir)
        starting = _Starting(job)
        for launch in request["workers"]:
            state: dict[str, Any] = {
                "version": 2,
                "job_id": launch["job_id"],
                "worker": int(launch["index"]),
                "executor_pid": os.getpid(),
                "executor_started_at": self.started_at,
                "pid": None,
                "pgid": None,
                "started_at": None,
                "ended_at": None,
                "return_code": None,
                "signal": None,
                "reason": None,
                "stopped_by": None,
                "rusage": None,
            }
            worker = _Worker(job, launch, state, self.spare)
            try:
                out = open_private(Path(launch["stdout"]))
                try:
                    run_as = launch.get("run_as")
                    if run_as is None:
                        worker.pid = _spawn(launch, self.devnull, out, self.descriptors)
                        starting.workers.append((worker, None))
                    else:
                        starting.workers.append((worker, self._ask_spawner(run_as, launch, out)))
                finally:
                    os.close(out)
            except OSError as exc:
                starting.workers.append((worker, exc))
        return starting

    def _ask_spawner(self, run_as: dict[str, Any], launch: dict[str, Any], out: int) -> _Spawner:
        """Hand ``launch`` (and its output file, ``out``) to the spawner of its user, started
        if there is none or the one there was has ended; that spawner, which answers in turn."""
        ids = (int(run_as["uid"]), int(run_as["gid"]), tuple(int(g) for g in run_as["groups"]))
        message = json.dumps(launch).encode()
        if len(message) > SPAWNER_MESSAGE:
            raise _too_large()
        for _ in range(2):  # a spawner its user's processes killed: once more, with a new one
            spawner = self.spawners.get(ids)
            if spawner is None or spawner.gone:
                spawner = self.spawners[ids] = self._start_spawner(ids)
            try:
                spawner.send(message, out)
            except TimeoutError as exc:
                self._spawner_gone(spawner)
                raise _stuck(exc) from None
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise _too_large() from None
                self._spawner_gone(spawner)  # it had ended
                continue
            return spawner
        raise OSError(errno.EPIPE, "the spawner of its user ended at once, twice: see executor.log")

    def _start_spawner(self, ids: tuple[int, int, tuple[int, ...]]) -> _Spawner:
        """Fork the spawner of the user ``ids`` (uid, gid, groups): :func:`_serve_spawner`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 2 * SPAWNER_MESSAGE)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: serves, then _exit
            try:
                _serve_spawner(theirs.fileno(), self.devnull, ids, self.descriptors)
            finally:
                os._exit(70)
        theirs.close()
        spawner = _Spawner(pid, ids[0], ours)
        self.selector.register(ours, selectors.EVENT_READ, spawner)
        return spawner

    def _spawned(self, worker: _Worker, spawner: _Spawner) -> OSError | None:
        """The spawner's answer to ``worker``'s launch: None once it runs (its pid set), or why
        it could not be started. The ends it tells meanwhile wait in its queue."""
        while not spawner.gone:
            try:
                message = spawner.receive(block=True)
            except TimeoutError as exc:
                self._spawner_gone(spawner)
                return _stuck(exc)
            if message is None:
                self._spawner_gone(spawner)
                break
            if "ended" in message:
                spawner.ended.append(message)
            elif "pid" in message:
                worker.pid = int(message["pid"])
                spawner.workers[worker.pid] = worker
                return None
            else:
                number, words, name = message["error"]
                return PermissionError(words) if number is None else OSError(number, words, name)
        return OSError(
            errno.EPIPE,
            "the spawner of its user ended before it was started; submit it again (the next"
            " start makes a new spawner)",
        )

    def _read_spawner(self, spawner: _Spawner) -> None:
        """What a spawner told (its socket is readable): the ends of its commands, recorded;
        or its own end."""
        while not spawner.gone:
            try:
                message = spawner.receive(block=False)
            except BlockingIOError:
                break
            if message is None:
                self._spawner_gone(spawner)
            else:
                spawner.ended.append(message)
        self._record_spawned_ends(spawner)

    def _record_spawned_ends(self, spawner: _Spawner) -> None:
        while spawner.ended:
            message = spawner.ended.popleft()
            worker = spawner.workers.pop(int(message["ended"]), None)
            if worker is not None:
                self._ended(worker, int(message["code"]), message["rusage"])

    def _end_idle_spawners(self) -> None:
        """End each spawner that has had no command running for :data:`SPAWNER_IDLE` (one
        process per job user that ran something would otherwise live as long as this
        executor); the user's next start makes a new one."""
        now = time.monotonic()
        for ids, spawner in list(self.spawners.items()):
            if spawner.workers:
                spawner.last_busy = now
            elif spawner.gone or now - spawner.last_busy >= SPAWNER_IDLE:
                self._spawner_gone(spawner)
                del self.spawners[ids]

    def _spawner_gone(self, spawner: _Spawner) -> None:
        """A spawner ended (its user's processes may kill it), or is to end (it took or answered
        nothing within :data:`SPAWNER_WAIT`, or this executor exits): killed and reaped; the
        commands it had started and not told the end of are stopped (nobody can learn how they
        ended) and recorded killed, with that reason."""
        if spawner.gone:
            return
        spawner.gone = True
        self.selector.unregister(spawner.sock)
        spawner.sock.close()
        os.kill(spawner.pid, signal.SIGKILL)  # our child, unreaped: its pid is still its own
        os.waitpid(spawner.pid, 0)
        self._record_spawned_ends(spawner)
        for worker in list(spawner.workers.values()):
            if _runs_as(worker.pid, spawner.uid):  # not ours to reap: never a reused pid's
                _killpg(worker.pid, signal.SIGKILL)
            worker.stop_reason = worker.stop_reason or (
                "signal",
                "its end could not be recorded: the executor's spawner for its user was killed",
            )
            self._ended(worker, -signal.SIGKILL, None)
        spawner.workers.clear()

    def _started(self, starting: _Starting) -> dict[str, Any]:
        """Record each started worker of one start once its command runs (its state file,
        its pidfd watched, its walltime set) or could not be run; the start's answer."""
        job = starting.job
        for worker, started in starting.workers:
            failure = self._spawned(worker, started) if isinstance(started, _Spawner) else started
            if failure is None and started is None:  # spawned here: this executor watches it
                try:
                    worker.pidfd = os.pidfd_open(worker.pid)
                except OSError as exc:  # no descriptor left: a command not watched is not run
                    _killpg(worker.pid, signal.SIGKILL)
                    os.waitpid(worker.pid, 0)
                    failure = OSError(f"its executor could not watch it ({exc})")
            if failure is not None:
                code = 127 if isinstance(failure, FileNotFoundError) else 126
                worker.state.update(
                    ended_at=time.time(), return_code=code, reason=f"could not start: {failure}"
                )
                worker.save()
                self._fail_gang(job, worker.index, str(worker.state["reason"]))
                continue
            worker.state.update(pid=worker.pid, pgid=worker.pid, started_at=time.time())
            worker.save()
            worker.alive = True
            job.running[worker.index] = worker
            if worker.pidfd >= 0:  # its parent is this executor (else its spawner tells)
                self.selector.register(worker.pidfd, selectors.EVENT_READ, worker)
            walltime = worker.launch.get("walltime")
            if walltime is not None:
                self.timers.add(time.monotonic() + float(walltime), worker, "walltime")
            if job.gang_failed:
                worker.stop(("gang", "stopped because a sibling failed"), self.timers)
            elif self.stopping:
                worker.stop(("signal", "its executor was asked to stop"), self.timers)
        if job.running:
            self.jobs[job.job_dir] = job
        return {"started": len(starting.workers)}

    def _finish(self, worker: _Worker) -> None:
        """A command this executor is the parent of has exited (its pidfd is readable)."""
        self.selector.unregister(worker.pidfd)
        os.close(worker.pidfd)
        worker.pidfd = -1
        _killpg(worker.pid, signal.SIGKILL)  # leftovers of the group; the zombie leader pins it
        _, status, rusage = os.wait4(worker.pid, 0)
        self._ended(worker, os.waitstatus_to_exitcode(status), _usage(rusage))

    def _ended(self, worker: _Worker, code: int, usage: dict[str, float] | None) -> None:
        """Record the end of ``worker``'s command (``code`` as
        :func:`os.waitstatus_to_exitcode` gives it), tell every client, stop its siblings if
        it failed by itself."""
        job = worker.job
        worker.alive = False
        if worker.stop_reason is None and (job.job_dir / CANCEL_FILE).exists():
            worker.stop_reason = ("cancel", "cancelled")
        state = worker.state
        state.update(
            ended_at=time.time(),
            return_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            rusage=usage,
        )
        if worker.stop_reason is not None:
            state["stopped_by"], state["reason"] = worker.stop_reason
        elif code > 0:
            state["reason"] = f"exited with code {code}"
        elif code < 0:
            state["reason"] = f"killed by {signal.Signals(-code).name}"
        worker.save()
        del job.running[worker.index]
        if code != 0 and state["stopped_by"] not in ("cancel", "gang"):
            self._fail_gang(job, worker.index, str(state["reason"]))
        if not job.running:
            self.jobs.pop(job.job_dir, None)
        self._tell_everyone({"event": "ended", "job_dir": str(job.job_dir)})

    def _tell_everyone(self, event: dict[str, Any]) -> None:
        line = json.dumps(event).encode() + b"\n"
        for client in list(self.clients.values()):
            client.outbox += line
            self._flush(client)

    def _fail_gang(self, job: _Job, index: int, reason: str) -> None:
        """Worker ``index`` failed by itself: say so in ``gang.json`` and stop its siblings."""
        job.gang_failed = True
        with contextlib.suppress(OSError):
            if not (job.job_dir / GANG_FILE).exists():
                self.spare.write(job.job_dir / GANG_FILE, {"worker": index, "reason": reason})
        for sibling in job.running.values():
            sibling.stop(("gang", f"stopped because worker {index} failed"), self.timers)


def _spawn(launch: dict[str, Any], stdin: int, out: int, descriptors: tuple[int, int]) -> int:
    """Start the command of a launch as this process's user with ``posix_spawn``, in a new
    session, its stdout and stderr ``out``; its pid once it runs. Raises
    :class:`PermissionError` when the working directory cannot be entered, the exec's error
    (:class:`FileNotFoundError` for a command not found).

    Used by the executor for a command of its own user (no ``run_as``) and by the spawner of a
    job user (:func:`_serve_spawner`) for that user's: a vfork copies none of the caller's page
    tables and runs no Python before the exec — half the CPU of a fork with Python in the
    child before its exec (benchmarks/spawn.py). The command gets the working directory
    (entered here first, as the user: the caller is single-threaded and its own paths are
    absolute), every signal at its default and none blocked, the limit of open files the
    executor was started with (``descriptors``), and the job's ``PATH`` searched as
    ``execvpe`` would."""
    cwd, command = launch["cwd"], launch["command"]
    path = _command_path(command[0], launch["env"])
    own = resource.getrlimit(resource.RLIMIT_NOFILE)  # the executor's is raised (main)
    try:
        try:
            os.chdir(cwd)
        except OSError as exc:
            words = exc.strerror or str(exc)
            raise PermissionError(
                f"the job's user cannot enter its working directory {cwd} ({words})"
            ) from None
        if own != descriptors:
            resource.setrlimit(resource.RLIMIT_NOFILE, descriptors)
        try:
            return os.posix_spawn(
                path,
                command,
                launch["env"],
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, fd, i) for i, fd in ((0, stdin), (1, out), (2, out))
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=_SETTABLE_SIGNALS,
            )
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, command[0]) from None
        finally:
            if own != descriptors:
                resource.setrlimit(resource.RLIMIT_NOFILE, own)
    finally:
        os.chdir("/")


def _serve_spawner(
    sock_fd: int, stdin: int, ids: tuple[int, int, tuple[int, ...]], descriptors: tuple[int, int]
) -> NoReturn:
    """The spawner of one job user: a child of the executor that gives up every descriptor
    but its socket and stdin's, becomes the user (``ids``: uid, gid, groups — and so can no
    longer be traced or read by that user's processes: a process whose user changed is not
    dumpable), then, for each launch on its socket (a JSON object, its output file's
    descriptor alongside), starts its command (:func:`_spawn`) and answers ``{"pid": …}`` or
    ``{"error": [errno, words, file]}``; and for each command that ended, kills what is left
    of its process group, reaps it and tells ``{"ended": pid, "code": …, "rusage": …}``.
    Exits once the executor's end of the socket closes."""
    gc.freeze()  # nothing of the executor's may be finalised here: its descriptors are gone
    signal.set_wakeup_fd(-1)  # the executor's, closed below
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in (sock_fd, stdin) and int(name) > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor
                os.close(int(name))
    for sig in (signal.SIGTERM, signal.SIGINT):  # it ends with the executor's socket (or KILL)
        signal.signal(sig, _disregard)
    uid, gid, groups = ids
    os.setgroups(list(groups))
    os.setregid(gid, gid)
    os.setreuid(uid, uid)
    resource.setrlimit(resource.RLIMIT_NOFILE, descriptors)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, _disregard)
    sock = socket.socket(fileno=sock_fd)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                # not socket.recv_fds: Python 3.11's drops its flags, and a descriptor received
                # without MSG_CMSG_CLOEXEC would be inherited by every command spawned after
                data, ancillary, _, _ = sock.recvmsg(
                    SPAWNER_MESSAGE, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC
                )
                if not data:
                    os._exit(0)
                fds = array.array("i")
                for level, kind, payload in ancillary:
                    if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                _spawn_for_executor(sock, data, list(fds), stdin, descriptors)
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _tell_ends(sock)


def _spawn_for_executor(
    sock: socket.socket, data: bytes, fds: list[int], stdin: int, descriptors: tuple[int, int]
) -> None:
    """In a spawner: start the launch ``data`` with the output descriptor that came with it
    (``fds``); answer its pid or why it could not be started."""
    try:
        if len(fds) != 1:
            raise OSError(errno.EINVAL, "no output file came with the launch")
        answer: dict[str, Any] = {"pid": _spawn(json.loads(data), stdin, fds[0], descriptors)}
    except OSError as exc:
        answer = {"error": [exc.errno, exc.strerror or str(exc), exc.filename]}
    except (ValueError, KeyError, TypeError) as exc:
        answer = {"error": [errno.EINVAL, f"bad launch: {exc!r}", None]}
    finally:
        for fd in fds:
            os.close(fd)
    sock.send(json.dumps(answer).encode())


def _tell_ends(sock: socket.socket) -> None:
    """In a spawner: for each command that exited, kill what is left of its group (the
    unreaped leader pins it), reap it and tell its end."""
    while True:
        try:
            exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if exited is None:
            return
        _killpg(exited.si_pid, signal.SIGKILL)
        _, status, rusage = os.wait4(exited.si_pid, 0)
        code = os.waitstatus_to_exitcode(status)
        sock.send(
            json.dumps({"ended": exited.si_pid, "code": code, "rusage": _usage(rusage)}).encode()
        )


def _command_path(name: str, env: dict[str, str]) -> str:
    """The file ``execvpe`` would run for ``name`` with ``env``: ``name`` itself when it has a
    slash, else the first executable file of that name in ``env``'s ``PATH`` (the default
    path without one). Raises the error ``execvpe`` would: :class:`PermissionError` when a
    file was found but none could be run, :class:`FileNotFoundError` otherwise."""
    if "/" in name:
        return name
    denied = False  # a file of that name was found that cannot be run (or a directory)
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        denied = denied or os.path.exists(candidate)
    code = errno.EACCES if denied else errno.ENOENT
    raise OSError(code, os.strerror(code), name)


def _usage(rusage: resource.struct_rusage) -> dict[str, float]:
    """A command's resource usage as its state file records it."""
    return {
        "cpu_seconds": rusage.ru_utime + rusage.ru_stime,
        "max_rss_mb": rusage.ru_maxrss / 1024.0,  # Linux reports KiB
        "io_bytes": (rusage.ru_inblock + rusage.ru_oublock) * 512,
    }


def main(argv: list[str]) -> int:
    """Entry point: ``argv == [jobs_dir]``. Returns 0 when it stopped, 2 on a bad argument,
    :data:`ANOTHER_EXECUTOR` when another executor serves the directory."""
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -I -S executor.py JOBS_DIR", file=sys.stderr)
        return 2
    jobs_dir = Path(argv[0])
    os.umask(0o077)
    lock = os.open(jobs_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return ANOTHER_EXECUTOR
    dir_fd = os.open(jobs_dir, os.O_RDONLY | os.O_DIRECTORY)
    address = socket_address(dir_fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)  # a dead executor's: the lock is ours
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    os.chmod(address, 0o600)
    listener.listen(128)
    listener.setblocking(False)
    # a pidfd per running worker: as many open files as the hard limit allows (a soft limit
    # of 1024, the usual default, would refuse the 1,000th worker of an array)
    descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (descriptors[1], descriptors[1]))
    try:
        Executor(jobs_dir, descriptors).serve(listener)
    finally:
        os.unlink(address)  # before the lock goes: no successor's socket is removed
        listener.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
