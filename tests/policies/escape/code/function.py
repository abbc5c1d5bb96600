"""A policy that tries to break out of the sandbox; ``management(action, data)`` names the try
and answers what happened (tests/test_sandbox_escapes.py)."""

import contextlib
import os
import socket
import subprocess
import sys
import time


def _read(path):
    try:
        with open(path, "rb") as source:
            return {"read": True, "head": source.read(200).decode(errors="replace")}
    except OSError as exc:
        return {"read": False, "error": f"{type(exc).__name__}: {exc}"}


def _write(path):
    try:
        with open(path, "a") as out:
            out.write("escaped\n")
        return {"wrote": True}
    except OSError as exc:
        return {"wrote": False, "error": f"{type(exc).__name__}: {exc}"}


def _connect(host, port):
    try:
        with socket.create_connection((host, port), timeout=5):
            return {"connected": True}
    except OSError as exc:
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}


def _fill(mb):
    """Write 1 MB files into the cwd (the private tmp) until ``mb`` or an error."""
    written, chunk = 0, b"x" * 2**20
    try:
        while written < mb:
            with open(f"fill-{written}", "wb") as out:
                out.write(chunk)
            written += 1
        error = None
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    for n in range(written + 1):
        with contextlib.suppress(OSError):
            os.remove(f"fill-{n}")
    return {"written_mb": written, "error": error}


HOLD = "import sys, time; b = bytearray({mb} * 2**20); b[::4096] = b'x' * len(b[::4096]); print('held', flush=True); time.sleep(120)"


def _hoard(children, mb):
    """Start ``children`` processes that each touch ``mb`` MB and wait; count those that said
    they held it and, at the end, those still alive (holding it at the same time)."""
    procs, refused = [], None
    for _ in range(children):
        try:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", HOLD.format(mb=mb)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            )
        except OSError as exc:
            refused = f"{type(exc).__name__}: {exc}"
            break
    held = sum(1 for proc in procs if proc.stdout.readline().strip() == b"held")
    # an OOM kill the last allocation set off may not have landed yet: count until the number
    # stops changing (CI once counted 4 of 64 MB alive under a 256 MB limit, one being killed)
    alive = sum(1 for proc in procs if proc.poll() is None)
    for _ in range(30):
        time.sleep(0.1)
        now = sum(1 for proc in procs if proc.poll() is None)
        if now == alive:
            break
        alive = now
    for proc in procs:
        proc.kill()
        proc.wait()
    return {"held": held, "alive": alive, "started": len(procs), "refused": refused}


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        raise ValueError("this policy only answers management actions")

    def management(self, action, data):
        if action == "read":
            return _read(data["path"])
        if action == "write":
            return _write(data["path"])
        if action == "connect":
            return _connect(data["host"], data["port"])
        if action == "spawn":
            subprocess.Popen(["sleep", data["seconds"]])
            return {"spawned": True}
        if action == "fill":
            return _fill(data["mb"])
        if action == "hoard":
            return _hoard(data["children"], data["mb"])
        if action == "whoami":
            return {"uid": os.getuid(), "gid": os.getgid(), "pids": sorted(os.listdir("/proc"))}
        return {"status": "error", "message": f"Unknown action '{action}'"}
