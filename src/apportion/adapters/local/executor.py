"""The ``local`` adapter's executor, and the on-disk layout it shares with the adapter.

One executor per jobs directory starts every worker's command, watches it and records its end.
It is run as a script, ``python -I -S <this file> <jobs dir>`` (argv only), by
:class:`~apportion.adapters.local.adapter.LocalAdapter`, in its own session, so it outlives the
server: a restarted server connects to it again. Standard library only and single-threaded: it
starts fast, cannot break on a dependency, may enter a command's working directory itself before
it spawns it (:func:`_spawn`, a command of its own user) and may fork and run Python in the
child until its exec (:func:`_fork`, a command that runs as another user).

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
with code 3; ``executor.log`` is its stderr. It holds a pidfd per running command, so it raises
its limit of open files to the hard one (its commands get the limit it was started with); a
client that still finds no descriptor left waits in the backlog while accepting pauses.

**Each worker's files** in its job's directory — the adapter reads them, the executor writes
them atomically: ``worker-<i>.state.json`` once the command started (pid, pgid, started_at, the
executor's pid and start time) and once it ended (ended_at, return_code or signal, reason,
stopped_by, rusage); ``worker-<i>.out`` its stdout and stderr.

**What stops a command** (SIGTERM to its process group, SIGKILL ``grace`` seconds later; the
state's ``stopped_by`` says why): its ``walltime`` (``"walltime"``); a sibling of its job that
failed, or ``gang.json`` written by the adapter (``"gang"``); SIGTERM/SIGINT to the executor
(``"signal"``; it then starts nothing more and exits when every command has ended). A cancel
is the adapter's own signal to the process group; the end then reads ``stopped_by:
"cancel"`` because ``cancel.json`` exists. When a command has exited (its pidfd is readable;
the zombie still pins its process group) whatever is left of its group is SIGKILLed, it is
reaped with ``wait4`` and its CPU seconds, max RSS and block I/O are recorded. A worker whose
command failed by itself writes ``gang.json`` and its siblings are stopped.

**When it exits**: when no command runs and no client is connected (an idle executor costs
nothing to start again), or after SIGTERM once its commands have ended. A SIGKILLed executor
records nothing more: the adapter then stops its commands and reports them lost.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import itertools
import json
import os
import resource
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
START_BATCH = 64  # workers started at most before their execs are awaited and recorded
ACCEPT_PAUSE = 0.5  # seconds accepting pauses when no descriptor was left for a client


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
    one left (each running command holds a pidfd) is written in its place, so a command that
    runs is never left without its state file."""

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
        self.pidfd = -1
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
        if self.stop_reason is None and self.pidfd >= 0:
            self.stop_reason = reason
            _killpg(self.pid, signal.SIGTERM)
            timers.add(time.monotonic() + self.grace, self, "kill")


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
            if worker.pidfd >= 0:
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
    """A start request whose workers were forked or spawned: each with its pipe (None when
    spawned: it runs) or why it could not be started, until :meth:`Executor._started` records
    them."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.workers: list[tuple[_Worker, int | OSError | None]] = []


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
                elif events & selectors.EVENT_WRITE and key.fd in self.clients:
                    self._flush(self.clients[key.fd])
            if self.signalled and not self.stopping:
                self._stop_everything()
            self._read_clients()
            self._handle_requests()
            self._fire_timers()
            if self.accept_again_at is not None and time.monotonic() >= self.accept_again_at:
                self.accept_again_at = None
                self.selector.register(listener, selectors.EVENT_READ, "listener")
        if self.accept_again_at is None:
            self.selector.unregister(listener)

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
        together: every worker of up to :data:`START_BATCH` of them is started (forked or
        spawned), and only then is each one's exec awaited and recorded — the commands start
        while the others fork."""
        for client in sorted(self.clients.values(), key=lambda c: c.order):
            while client.inbox.find(b"\n") >= 0:
                answers: list[dict[str, Any] | _Starting] = []
                forked = 0
                while forked < START_BATCH and (end := client.inbox.find(b"\n")) >= 0:
                    line = bytes(client.inbox[:end])
                    del client.inbox[: end + 1]
                    answer = self._answer(line)
                    answers.append(answer)
                    if isinstance(answer, _Starting):
                        forked += len(answer.workers)
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
        """Fork every worker of a start request (:meth:`_started` records them), or say why
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
                if launch.get("run_as") is None:
                    worker.pid, report = _spawn(launch, self.devnull, self.descriptors), None
                else:
                    worker.pid, report = _fork(launch, self.devnull, self.descriptors)
            except OSError as exc:
                starting.workers.append((worker, exc))
            else:
                starting.workers.append((worker, report))
        return starting

    def _started(self, starting: _Starting) -> dict[str, Any]:
        """Record each started worker of one start once its command runs (its state file,
        its pidfd watched, its walltime set) or could not be run; the start's answer."""
        job = starting.job
        for worker, forked in starting.workers:
            failure = _exec_outcome(worker.pid, forked, worker.launch)
            if failure is None:
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
            job.running[worker.index] = worker
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
        job = worker.job
        self.selector.unregister(worker.pidfd)
        os.close(worker.pidfd)
        worker.pidfd = -1
        _killpg(worker.pid, signal.SIGKILL)  # leftovers of the group; the zombie leader pins it
        _, status, rusage = os.wait4(worker.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if worker.stop_reason is None and (job.job_dir / CANCEL_FILE).exists():
            worker.stop_reason = ("cancel", "cancelled")
        state = worker.state
        state.update(
            ended_at=time.time(),
            return_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            rusage={
                "cpu_seconds": rusage.ru_utime + rusage.ru_stime,
                "max_rss_mb": rusage.ru_maxrss / 1024.0,  # Linux reports KiB
                "io_bytes": (rusage.ru_inblock + rusage.ru_oublock) * 512,
            },
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


def _fork(launch: dict[str, Any], stdin: int, descriptors: tuple[int, int]) -> tuple[int, int]:
    """Fork the process of one command (:func:`_become`), in a new session (it leads its own
    process group); its pid and the pipe that tells :func:`_exec_outcome` whether it runs.
    Raises OSError when the output file cannot be opened or no process forked.

    Forked here rather than by :mod:`subprocess`: its ``user``/``preexec_fn`` path costs three
    times the CPU in this process and waits for the exec (docs/performance.md). This process
    has one thread, so the child may run Python until its exec."""
    out = open_private(Path(launch["stdout"]))
    try:
        report_r, report_w = os.pipe()  # both close-on-exec: EOF once the command runs
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child: exec or _exit, never returns
                _become(launch, stdin, descriptors, out, report_w)
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
    finally:
        os.close(out)
    return pid, report_r


def _spawn(launch: dict[str, Any], stdin: int, descriptors: tuple[int, int]) -> int:
    """Start the command of a launch that runs as this process's user (no ``run_as``) with
    ``posix_spawn``, in a new session; its pid once it runs. Raises :class:`PermissionError`
    when the working directory cannot be entered, the exec's error (:class:`FileNotFoundError`
    for a command not found) or the output file's.

    Spawned rather than forked (:func:`_fork`): a vfork copies none of this process's page
    tables and runs no Python before the exec — half the CPU per start (benchmarks/spawn.py).
    ``posix_spawn`` cannot change the user, so a ``run_as`` launch is forked. The command gets
    the working directory (entered here first: this process is single-threaded and its own
    paths are absolute), every signal at its default and none blocked, the limit of open files
    this process was started with (``descriptors``), and the job's ``PATH`` searched as
    ``execvpe`` would."""
    cwd, command = launch["cwd"], launch["command"]
    path = _command_path(command[0], launch["env"])
    out = open_private(Path(launch["stdout"]))
    raised = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        try:
            os.chdir(cwd)
        except OSError as exc:
            words = exc.strerror or str(exc)
            raise PermissionError(
                f"the job's user cannot enter its working directory {cwd} ({words})"
            ) from None
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
            resource.setrlimit(resource.RLIMIT_NOFILE, raised)
    finally:
        os.close(out)
        os.chdir("/")


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


def _exec_outcome(pid: int, forked: int | OSError | None, launch: dict[str, Any]) -> OSError | None:
    """Wait until the child ``pid`` of :func:`_fork` runs its command (None) or says why it
    could not (the error; the child is reaped): :class:`PermissionError` for the working
    directory, :class:`FileNotFoundError` for a command not found. ``forked`` is the child's
    pipe, the error that kept it from being forked, or None when :func:`_spawn` started it."""
    if forked is None:
        return None
    if isinstance(forked, OSError):
        return forked
    chunks = []
    try:
        while chunk := os.read(forked, 4096):
            chunks.append(chunk)
    finally:
        os.close(forked)
    if not chunks:
        return None
    os.waitpid(pid, 0)
    step, number, words = b"".join(chunks).decode(errors="replace").split(":", 2)
    if step == "cwd":
        cwd = launch["cwd"]
        return PermissionError(f"the job's user cannot enter its working directory {cwd} ({words})")
    return OSError(int(number), words, launch["command"][0])


def _become(
    launch: dict[str, Any], stdin: int, descriptors: tuple[int, int], out: int, report: int
) -> NoReturn:
    """The forked child of :func:`_fork`: become the job's process and exec its command, or
    write ``step:errno:words`` to ``report`` and exit 127. Its signals need no reset: the
    executor ignores none and its handlers end with the exec. Its limit of open files is the
    one the executor was started with (``descriptors``), not the executor's raised one."""
    step = "setup"
    try:  # as little Python as may be: each object it touches is a page copied
        resource.setrlimit(resource.RLIMIT_NOFILE, descriptors)
        os.setsid()
        os.dup2(stdin, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        run_as = launch.get("run_as")
        if run_as is not None:
            os.setgroups([int(g) for g in run_as["groups"]])
            os.setregid(int(run_as["gid"]), int(run_as["gid"]))
            os.setreuid(int(run_as["uid"]), int(run_as["uid"]))
        step = "cwd"
        os.chdir(launch["cwd"])
        step = "exec"
        command = launch["command"]
        if "/" in command[0]:
            os.execve(command[0], command, launch["env"])  # noqa: S606 - argv list, no shell
        os.execvpe(command[0], command, launch["env"])  # noqa: S606 - found in its PATH
    except OSError as exc:
        message = f"{step}:{exc.errno or 0}:{exc.strerror or exc}"
    except BaseException as exc:  # nothing may escape a forked child
        message = f"{step}:0:{exc!r}"
    with contextlib.suppress(BaseException):
        os.write(report, message.encode(errors="replace")[:4000])
    os._exit(127)


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
