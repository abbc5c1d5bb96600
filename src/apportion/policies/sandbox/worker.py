"""The sandbox worker process: evaluates untrusted seed-format policies (run by ``sandbox.py``).

Started as ``python -I -B -m apportion.policies.sandbox.worker --memory-mb N --cpu-seconds N
--max-message-bytes N --max-answer-bytes N --max-context-bytes N`` with a clean environment.
In a jail (``jail.py``) it also gets ``--uid``, ``--gid`` and ``--join-cgroups`` (or, without
cgroups, ``--max-processes``): still root (holding only CAP_SETUID and CAP_SETGID), it enters
its own cgroups, then drops to the sandbox user for good. Before any policy code is loaded it
sets resource limits (address space, CPU seconds, open files, file size, no core dumps, and
without cgroups RLIMIT_NPROC), moves the protocol off stdin/stdout onto private descriptors and
points fd 1 and ``sys.stdout`` at stderr, so a policy's ``print`` cannot corrupt the protocol.
An answer says ``"spawned": true`` when a thread the policy started, or in a jail a process, is
still alive after the call, and the parent then replaces the worker.

Unjailed (the ``unsandboxed_policies`` opt-in) ``RLIMIT_NPROC`` is not set: it would count every
process of the server's user, so a limit low enough to matter would also stop the server.

Protocol: frames of a 4-byte big-endian length and a UTF-8 JSON object, both ways. It imports
only the standard library and the small ``loader`` module, so it starts fast.

* parent → worker: ``{"op": "eval", "id", "uri", "code_dir", "rule_id", "settings",
  "parameters", "input_data", "context"}``, ``{"op": "management", ... "action", "data"}``,
  ``{"op": "validate", "id", "uri", "code_dir"}``, ``{"op": "exit"}``, and ``{"op": "reply",
  "id", "ok", "value" | "type", "message"}`` answering a call.
* worker → parent: ``{"op": "ready", "pid"}`` once, ``{"op": "call", "id", "method", "args"}``
  while an eval is in flight, then ``{"op": "result", "id", "output", "context", "cpu"}`` or
  ``{"op": "error", "id", "phase", "type", "message", "traceback", "cpu"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import sys
import threading
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

from apportion.policies.loader import check_policy_class, load_policy_class

HEADER = struct.Struct(">I")
MAX_INSTANCES = 16
_TRACEBACK_CHARS = 8000


def read_exact(fd: int, size: int) -> bytes | None:
    """Read exactly ``size`` bytes from ``fd`` (blocking); None on EOF before the first byte."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise EOFError(f"stream ended inside a frame ({got} of {size} bytes)")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the blocking descriptor ``fd``."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def encode(obj: Any) -> bytes:
    """A frame (length header + strict JSON); raises TypeError/ValueError if not JSON-able."""
    body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def _limit(which: int, value: int, hard: int | None = None) -> None:
    _, cur_hard = resource.getrlimit(which)
    hard = value if hard is None else hard
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
    resource.setrlimit(which, (min(value, hard), hard))


# Where a jail binds this worker's cgroups' ``cgroup.procs`` (jail.JAIL_CGROUP_PROCS; the worker
# imports only the standard library and the loader, so the paths are repeated here).
CGROUP_PROCS = ("/run/cgroup-memory.procs", "/run/cgroup-pids.procs")


def join_cgroups() -> None:
    """Move this process into its own memory and pids cgroups (still root: before dropping)."""
    for procs in CGROUP_PROCS:
        with open(procs, "w") as out:
            out.write("0")


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good (real, effective and saved; no supplementary groups).

    Called first thing in a jailed worker, which ``bwrap`` starts as root holding only
    CAP_SETUID/CAP_SETGID: changing every uid away from 0 clears the capabilities too."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise SystemExit(f"the sandbox worker could not become uid {uid} gid {gid}")


def apply_limits(memory_mb: int, cpu_seconds: int, max_processes: int | None = None) -> None:
    """Lower this process's limits (hard limits too, so the policy cannot raise them).

    ``max_processes`` (jailed workers only) is RLIMIT_NPROC: it counts the tasks of the sandbox
    user, so it caps the processes and threads of all jailed workers together."""
    if max_processes is not None:
        _limit(resource.RLIMIT_NPROC, max_processes)
    _limit(resource.RLIMIT_AS, memory_mb * 2**20)
    _limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 2)  # SIGXCPU, then SIGKILL
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_FSIZE, 16 * 2**20)
    _limit(resource.RLIMIT_CORE, 0)


class Channel:
    """The private protocol descriptors, shared by the main loop and the injected clients."""

    def __init__(self, rfd: int, wfd: int, max_bytes: int) -> None:
        self.rfd, self.wfd, self.max_bytes = rfd, wfd, max_bytes
        self.lock = threading.Lock()
        self.active_id: Any = None  # the id of the eval in flight; clients work only then
        self._calls = 0

    def send(self, obj: Any) -> None:
        write_all(self.wfd, encode(obj))

    def receive(self) -> Any:
        header = read_exact(self.rfd, HEADER.size)
        if header is None:
            return None
        (size,) = HEADER.unpack(header)
        if size > self.max_bytes:
            raise EOFError(f"frame of {size} bytes is over the limit")
        return json.loads(read_exact(self.rfd, size) or b"null")

    def call(self, method: str, args: list[Any]) -> Any:
        """Ask the parent's SandboxServices; return its value or raise what it reported."""
        with self.lock:
            if self.active_id is None:
                raise RuntimeError(f"{method} is only available while eval runs")
            self._calls += 1
            self.send({"op": "call", "id": self._calls, "method": method, "args": args})
            reply = self.receive()
        if not isinstance(reply, dict) or reply.get("op") != "reply":
            os._exit(70)  # the parent is gone or confused; nothing sensible is left to do
        if reply.get("ok"):
            return reply.get("value")
        message = str(reply.get("message", "unknown error"))
        if reply.get("type") in ("LookupError", "KeyError"):
            raise LookupError(message)
        raise RuntimeError(f"{method} failed: {message}")


class ClusterClient:
    """The seed's cluster registry client, answered by the parent."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def read_cluster(self, cluster_id: str) -> tuple[bool, Any]:
        ok, value = self._channel.call("read_cluster", [cluster_id])
        return bool(ok), value

    def execute_query(self, query: Any) -> tuple[bool, Any]:
        ok, value = self._channel.call("execute_query", [query])
        return bool(ok), value


class ClusterMetricsClient:
    """The seed's global cluster metrics client; ``get_cluster`` raises on an unknown id."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def get_cluster(self, cluster_id: str) -> Any:
        return self._channel.call("get_cluster_metrics", [cluster_id])

    def query_clusters(self, query_params: Any = None) -> list[Any]:
        return list(self._channel.call("query_cluster_metrics", [query_params]))


class Policies:
    """Classes loaded once per (uri, code_dir); instances kept per construction arguments."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.classes: dict[tuple[str, str], type] = {}
        self.loads = 0
        self.instances: OrderedDict[tuple[str, ...], Any] = OrderedDict()

    def cls(self, msg: dict[str, Any]) -> type:
        key = (str(msg["uri"]), str(msg["code_dir"]))
        if key not in self.classes:
            self.loads += 1
            name = f"apportion_sandboxed_policy_{self.loads}"
            self.classes[key] = load_policy_class(Path(key[1]), module_name=name)
        return self.classes[key]

    def instance(self, msg: dict[str, Any]) -> Any:
        cls = self.cls(msg)
        settings, parameters = msg.get("settings") or {}, msg.get("parameters") or {}
        key = (
            str(msg["uri"]),
            str(msg["code_dir"]),
            str(msg.get("rule_id", "")),
            json.dumps(settings, sort_keys=True),
            json.dumps(parameters, sort_keys=True),
        )
        if key in self.instances:
            self.instances.move_to_end(key)
            return self.instances[key]
        injected = dict(settings)
        injected["cluster_client"] = ClusterClient(self.channel)
        injected["cluster_metrics_client"] = ClusterMetricsClient(self.channel)
        obj = cls(key[2], injected, parameters)
        self.instances[key] = obj
        while len(self.instances) > MAX_INSTANCES:
            self.instances.popitem(last=False)
        return obj


def _error(msg_id: Any, phase: str, exc: BaseException) -> dict[str, Any]:
    text = "".join(traceback.format_exception(exc))[-_TRACEBACK_CHARS:]
    return {
        "op": "error",
        "id": msg_id,
        "phase": phase,
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": text,
    }


def handle(policies: Policies, msg: dict[str, Any]) -> dict[str, Any]:
    """Run one request and build the answer frame (never raises for a policy's fault)."""
    op, msg_id = msg.get("op"), msg.get("id")
    phase: str = "load"
    try:
        if op == "validate":
            has = check_policy_class(policies.cls(msg), where=str(msg["uri"])).has_management
            return {"op": "result", "id": msg_id, "output": {"has_management": has}}
        if op not in ("eval", "management"):
            raise ValueError(f"unknown op {op!r}")
        policies.cls(msg)
        phase = "init"
        obj = policies.instance(msg)
        phase = str(op)
        if op == "management":
            if not callable(getattr(obj, "management", None)):
                phase = "no-management"
                raise NotImplementedError("the policy defines no management(action, data)")
            output = obj.management(msg.get("action"), msg.get("data"))
            return {"op": "result", "id": msg_id, "output": output}
        context = msg.get("context")
        context = context if isinstance(context, dict) else {}
        policies.channel.active_id = msg_id
        try:
            output = obj.eval(msg.get("parameters") or {}, msg.get("input_data"), context)
        finally:
            with policies.channel.lock:
                policies.channel.active_id = None
        return {"op": "result", "id": msg_id, "output": output, "context": context}
    except (Exception, SystemExit) as exc:
        return _error(msg_id, phase, exc)


def left_running(jailed: bool) -> bool:
    """Whether anything the call started still runs: a thread of this process besides its own
    (``/proc/self/task``), or, in a jail, a process other than this one and the jail's init
    (PID 1) in this PID namespace. The parent then replaces this worker after the call (and
    with it the namespace and everything in it). The parent also counts the worker's tasks in
    its ``pids`` cgroup, which a policy that took over this process cannot hide."""
    if len(os.listdir("/proc/self/task")) > 1:
        return True
    me = os.getpid()
    return jailed and any(
        name.isdigit() and int(name) not in (1, me) for name in os.listdir("/proc")
    )


def _frame(answer: dict[str, Any], max_answer: int, max_context: int) -> bytes:
    """The answer as a frame; a ``size`` error instead when its output is over ``max_answer``
    bytes or its context over ``max_context`` (the parent refuses a larger frame unread)."""
    answer["cpu"] = time.process_time()
    try:
        sizes: dict[str, int] = {
            part: len(encode(answer[part]))
            for part in ("output", "context")
            if answer.get("op") == "result" and part in answer
        }
        data = encode(answer)
    except (TypeError, ValueError, RecursionError, MemoryError) as exc:
        return encode(_error(answer.get("id"), "serialize", exc) | {"cpu": answer["cpu"]})
    for part, limit, setting in (
        ("output", max_answer, "policy_answer_max_bytes"),
        ("context", max_context, "policy_context_max_bytes"),
    ):
        if sizes.get(part, 0) > limit:
            too_big = ValueError(
                f"its {'answer' if part == 'output' else 'context'} is {sizes[part]} bytes,"
                f" over the limit of {limit} bytes (the server's {setting})"
            )
            return encode(_error(answer.get("id"), "size", too_big) | {"cpu": answer["cpu"]})
    return data


def _isolate_stdio() -> tuple[int, int]:
    proto_in, proto_out = os.dup(0), os.dup(1)  # dup'd descriptors are not inheritable
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.stderr
    return proto_in, proto_out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process; returns its exit status."""
    parser = argparse.ArgumentParser(prog="apportion.policies.sandbox.worker")
    parser.add_argument("--memory-mb", type=int, default=1024)
    parser.add_argument("--cpu-seconds", type=int, default=60)
    parser.add_argument("--max-message-bytes", type=int, default=64 * 2**20)
    parser.add_argument("--max-answer-bytes", type=int, default=2**20)
    parser.add_argument("--max-context-bytes", type=int, default=256 * 2**10)
    parser.add_argument("--uid", type=int, help="jailed: the sandbox user to become")
    parser.add_argument("--gid", type=int, help="jailed: the sandbox group to become")
    parser.add_argument("--max-processes", type=int, help="jailed: RLIMIT_NPROC")
    parser.add_argument("--join-cgroups", action="store_true", help="jailed: enter cgroups")
    args = parser.parse_args(argv)
    jailed = args.uid is not None and args.gid is not None
    if jailed and args.join_cgroups:
        join_cgroups()
    if jailed:
        drop_privileges(args.uid, args.gid)
    apply_limits(args.memory_mb, args.cpu_seconds, args.max_processes if jailed else None)
    sys.dont_write_bytecode = True
    proto_in, proto_out = _isolate_stdio()
    channel = Channel(proto_in, proto_out, args.max_message_bytes)
    policies = Policies(channel)
    channel.send({"op": "ready", "pid": os.getpid()})
    while True:
        msg = channel.receive()
        if not isinstance(msg, dict) or msg.get("op") == "exit":
            # The parent is gone or done: remove the private cwd it made for us, if it is one.
            if Path.cwd().name.startswith("apportion-sandbox-"):
                shutil.rmtree(Path.cwd(), ignore_errors=True)
            return 0
        answer = handle(policies, msg)
        if left_running(jailed):
            answer["spawned"] = True
        with channel.lock:
            write_all(proto_out, _frame(answer, args.max_answer_bytes, args.max_context_bytes))


if __name__ == "__main__":
    sys.exit(main())
