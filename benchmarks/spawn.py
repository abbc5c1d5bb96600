"""What starting a command as another user costs a root process, each way it can be done
(issue 13: the jobs' own share of a local job's CPU).

    sudo .venv/bin/python -I -S benchmarks/spawn.py               # 500 starts each, 3 rounds
    sudo .venv/bin/python -I -S benchmarks/spawn.py --starts 200 --user nobody

Run as root with ``-I -S`` (an interpreter as small as the local executor's, which forks its
commands). Each way starts ``/bin/true`` ``--starts`` times, one after another, as ``--user``
(its group, no supplementary groups) in its own session, in ``/tmp``, and waits for each:

* **fork + Python child** — what ``adapters/local/executor.py`` does: ``os.fork``, then the
  child (Python until its exec) sets its session, groups, gid and uid, enters the working
  directory as the user, and execs.
* **subprocess, user=** — ``subprocess.Popen(user=…, group=…, extra_groups=[], cwd=…)``: the
  child is C, but enters the directory as root, before it becomes the user (why the executor
  does not use it).
* **posix_spawn as the user** — a helper forked once that became the user enters the directory
  and ``posix_spawn``\\ s (vfork: no copy of the parent's page tables, no Python in the child):
  the floor a spawner per job user would reach. Its own start is not counted.
* **posix_spawn as root** — the same with no change of user (reference: no user).

Reported per start, the medians over ``--rounds``: wall time, the starting process's CPU and
the started commands' CPU (``RUSAGE_CHILDREN``). No assertion on any timing.
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

TRUE = "/bin/true"
CWD = "/tmp"


def fork_python_child(uid: int, gid: int) -> Callable[[], None]:
    def start() -> None:
        pid = os.fork()
        if pid == 0:  # the child: exec or _exit
            try:
                os.setsid()
                os.setgroups([])
                os.setregid(gid, gid)
                os.setreuid(uid, uid)
                os.chdir(CWD)
                os.execv(TRUE, [TRUE])
            finally:
                os._exit(127)
        os.waitpid(pid, 0)

    return start


def subprocess_user(uid: int, gid: int) -> Callable[[], None]:
    def start() -> None:
        subprocess.run(
            [TRUE], user=uid, group=gid, extra_groups=[], cwd=CWD, start_new_session=True,
            check=True,
        )  # fmt: skip

    return start


def spawn_as_root() -> Callable[[], None]:
    def start() -> None:
        os.chdir(CWD)
        pid = os.posix_spawn(TRUE, [TRUE], os.environ, setsid=True)
        os.waitpid(pid, 0)

    return start


def measure(start: Callable[[], None], starts: int) -> tuple[float, float, float]:
    """Per start: wall ms, this process's CPU ms, the commands' CPU ms."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    began = time.perf_counter()
    for _ in range(starts):
        start()
    wall = time.perf_counter() - began
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own_after.ru_utime + own_after.ru_stime - own.ru_utime - own.ru_stime
    child_cpu = (
        children_after.ru_utime + children_after.ru_stime - children.ru_utime - children.ru_stime
    )
    return 1000 * wall / starts, 1000 * cpu / starts, 1000 * child_cpu / starts


def as_user(uid: int, gid: int, starts: int) -> tuple[float, float, float]:
    """:func:`measure` of posix_spawn in a child that became the user (its figures come back
    through a pipe; the commands are its children)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setregid(gid, gid)
            os.setreuid(uid, uid)
            figures = measure(spawn_as_root(), starts)
            os.write(write_end, repr(figures).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        text = answer.read()
    os.waitpid(pid, 0)
    wall, cpu, child = (float(x) for x in text.strip("()").split(","))
    return wall, cpu, child


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--user", default="nobody", help="the user the commands run as")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.stderr.write("spawn.py: run it as root (it starts commands as --user)\n")
        return 2
    user = pwd.getpwnam(args.user)
    uid, gid = user.pw_uid, user.pw_gid
    ways: list[tuple[str, Callable[[], tuple[float, float, float]]]] = [
        ("fork + Python child (the executor)", lambda: measure(fork_python_child(uid, gid), args.starts)),
        ("subprocess, user= (C child)", lambda: measure(subprocess_user(uid, gid), args.starts)),
        ("posix_spawn as the user", lambda: as_user(uid, gid, args.starts)),
        ("posix_spawn as root (no user)", lambda: measure(spawn_as_root(), args.starts)),
    ]  # fmt: skip
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in ways}
    for _ in range(args.rounds):  # the ways alternate: drift in the machine's speed is shared
        for name, way in ways:
            results[name].append(way())
    print(f"{args.starts} starts of {TRUE} each way, as {args.user}; medians of {args.rounds}")
    print()
    print(
        "| way | wall per start (ms) | starter's CPU (ms) | command's CPU (ms) | CPU in all (ms) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        wall, cpu, child = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {child:.2f} | {cpu + child:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
