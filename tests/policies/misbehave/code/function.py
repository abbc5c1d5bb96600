"""A policy that misbehaves in the way ``parameters["mode"]`` names (sandbox tests)."""

import ctypes
import os
import resource
import subprocess
import time
import uuid

# which worker answered: jailed workers all have PID 2 in their own PID namespace
WORKER = uuid.uuid4().hex


class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.settings = settings

    def eval(self, parameters, input_data, context):
        mode = parameters.get("mode")
        if mode == "raise":
            raise ValueError("the policy is broken on purpose")
        if mode == "loop":
            while True:
                pass
        if mode == "memory":
            block = bytearray(4 * 2**30)
            return {"size": len(block)}
        if mode == "exit":
            os._exit(3)
        if mode == "segv":
            ctypes.string_at(0)
        if mode == "print":
            print("garbage")
            os.write(1, b"\x00\x00\x00\x05more garbage on fd 1\n")
            return {"printed": True}
        if mode == "shout":
            print("y" * parameters["size"], "\n" * 1000)
            return {"shouted": parameters["size"]}
        if mode == "limits":
            names = ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE"]
            return {name: resource.getrlimit(getattr(resource, name)) for name in names}
        if mode == "spawn":  # a child that would outlive the call; then return or hang
            subprocess.Popen(["sleep", str(parameters["seconds"])])
            if parameters.get("hang"):
                while True:
                    pass
            return {"spawned": True}
        if mode == "orphan":  # unsandboxed runs only: a child in the host's PID space, then hang
            child = subprocess.Popen(["sleep", "60"])
            with open(parameters["pidfile"], "w") as out:
                out.write(str(child.pid))
            while True:
                pass
        if mode == "spin":
            until = time.process_time() + parameters["seconds"]
            while time.process_time() < until:
                pass
        if mode == "huge":
            return {"blob": "x" * parameters["size"]}
        if mode == "big_context":
            context["blob"] = "x" * parameters["size"]
            return {"worker": WORKER, "mode": mode}
        if mode == "threads":  # threads that outlive the call, hidden from the worker if asked
            import sys
            import threading

            def spin():
                end = time.monotonic() + parameters["seconds"]
                while time.monotonic() < end:
                    time.sleep(0.01)

            for _ in range(3):
                threading.Thread(target=spin, daemon=True).start()
            if parameters.get("hide"):
                sys.modules["__main__"].left_running = lambda jailed: False
            return {"worker": WORKER, "mode": mode}
        if mode == "hijack":  # take over the worker's handler, leave a global and a file
            import sys

            worker = sys.modules["__main__"]
            worker.HIJACKED = parameters["mark"]
            with open(os.path.join(os.getcwd(), "left-by-" + parameters["mark"]), "w") as out:
                out.write("secret")
            real = worker.handle

            def spy(policies, msg):
                answer = real(policies, msg)
                if answer.get("op") == "result":
                    answer["output"] = {"hijacked_by": parameters["mark"], "saw": msg.get("uri")}
                return answer

            worker.handle = spy
            return {"worker": WORKER, "mode": mode}
        if mode == "peek":
            import sys

            return {
                "worker": WORKER,
                "mode": mode,
                "hijacked": getattr(sys.modules["__main__"], "HIJACKED", None),
                "files": sorted(os.listdir(os.getcwd())),
            }
        if mode == "forge_frame":  # take over the worker: its next frame claims a huge size
            import sys

            worker = sys.modules["__main__"]
            claimed = parameters["claimed"]
            worker._frame = lambda answer, *limits: worker.HEADER.pack(claimed) + b"{}"
            return {"worker": WORKER, "mode": mode}
        if mode == "nonjson":
            return {"value": object()}
        if mode == "env":
            return {"env": dict(os.environ), "cwd": os.getcwd()}
        if mode == "sleep":
            started = time.time()
            time.sleep(parameters["seconds"])
            return {"worker": WORKER, "mode": mode, "started": started, "ended": time.time()}
        return {"worker": WORKER, "mode": mode}
