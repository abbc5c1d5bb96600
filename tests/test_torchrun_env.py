"""torchrun-ready gangs (issue 13, item 5): every worker of a job gets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``, and the GPUs laid out
so that ``cuda:LOCAL_RANK`` is its own. Two workers really meet: rank 0 listens on
MASTER_ADDR:MASTER_PORT with the standard library, rank 1 connects and says who it is (torch is
not installed here; its ``env://`` rendezvous reads the same variables)."""

from __future__ import annotations

import json
from typing import Any

from apportion.adapters.distributed import rendezvous_port
from tests.conftest import Running
from tests.jobs_helpers import PY, submit, wait_for

RENDEZVOUS = """
import json, os, socket, time
env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
       "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES")}
address = (env["MASTER_ADDR"], int(env["MASTER_PORT"]))
met = []
if env["RANK"] == "0":
    server = socket.create_server(address, reuse_port=False)
    server.settimeout(60)
    for _ in range(int(env["WORLD_SIZE"]) - 1):
        peer, _ = server.accept()
        met.append(json.loads(peer.makefile().readline()))
        peer.close()
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            peer = socket.create_connection(address, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    peer.sendall((json.dumps(env) + "\\n").encode())
    peer.close()
print(json.dumps({"env": env, "met": met}), flush=True)
"""


async def worker_output(running: Running, job_id: str, worker: int) -> dict[str, Any]:
    url = f"{running.url}/jobs/{job_id}/logs?worker={worker}"
    async with running.http.get(url) as response:
        printed: dict[str, Any] = json.loads((await response.text()).strip().splitlines()[-1])
    return printed


async def test_two_workers_meet_at_the_rendezvous_torchrun_would_use(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    config = {
        "command": [PY, "-c", RENDEZVOUS],
        "replica_count": 2,
        "resources": {"gpus": 1},
    }
    job_id = await submit(running, config)
    done = await wait_for(running, job_id, "completed", "failed", within=90)
    assert done["status"] == "completed", done
    first = await worker_output(running, job_id, 0)
    second = await worker_output(running, job_id, 1)
    assert [m["RANK"] for m in first["met"]] == ["1"]  # rank 1 reached rank 0
    nodes = {p["node_id"] for p in done["allocation"]}
    assert len(nodes) == 1  # binpack: both on one node, so the layout below is torchrun's
    port = str(rendezvous_port(job_id))
    for rank, printed in enumerate((first, second)):
        env = printed["env"]
        assert (env["RANK"], env["WORLD_SIZE"]) == (str(rank), "2")
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", port)
        placement = done["allocation"][rank]
        same_node = [p for p in done["allocation"] if p["node_id"] == placement["node_id"]]
        assert env["LOCAL_WORLD_SIZE"] == str(len(same_node))
        # torchrun's layout: cuda:LOCAL_RANK is the worker's own GPU
        visible = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert visible[int(env["LOCAL_RANK"])] == placement["gpus"][0]


async def test_a_jobs_own_master_port_is_kept(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    show = (
        "import os; print(os.environ['MASTER_PORT'], os.environ['RANK'], os.environ['WORLD_SIZE'])"
    )
    job_id = await submit(running, {"command": [PY, "-c", show], "env": {"MASTER_PORT": "29500"}})
    await wait_for(running, job_id, "completed")
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as response:
        assert (await response.text()).split() == ["29500", "0", "1"]
