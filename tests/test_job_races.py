"""Races between a user's action and the admission cycle, driven by a policy the test holds.

The policy (a ``--policy-dir`` policy, evaluated on a worker thread) signals when the cycle has
called it and then waits for a gate file: the test acts on the job while the cycle is inside its
placement, opens the gate, and checks what the cycle does with a decision that came too late.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.conftest import Running, running_server
from tests.jobs_helpers import PY, statuses, wait_for

POLICY = """
import os, time

class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        open({started!r}, "w").close()
        end = time.monotonic() + 60
        while not os.path.exists({gate!r}) and time.monotonic() < end:
            time.sleep(0.01)
        return [{{"cluster_id": "mixed-lab", "node_id": "mixed-lab-n03", "gpus": ["0"]}}]
"""


async def submit(live: Running, config: dict[str, Any]) -> str:
    async with live.http.post(f"{live.url}/jobs/submit", json={"config": config}) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["job_id"])


async def until_exists(path: Path) -> None:
    for _ in range(600):
        if await asyncio.to_thread(path.exists):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


async def test_a_job_cancelled_while_it_is_placed_never_runs(tmp_path: Path) -> None:
    started, gate, marker = tmp_path / "started", tmp_path / "gate", tmp_path / "ran.txt"
    code = tmp_path / "policies" / "gated" / "code"
    code.mkdir(parents=True)
    (code / "function.py").write_text(POLICY.format(started=str(started), gate=str(gate)))
    # the policy talks to the test through files in tmp_path: it needs no jail (this is about
    # the admission cycle), so it runs unsandboxed
    policies = tmp_path / "policies"
    async with running_server(
        tmp_path / "d", policy_dir=policies, unsandboxed_policies=True
    ) as live:
        await live.load_demo_fleet()
        command = [PY, "-c", f"open({str(marker)!r}, 'a').write('ran')"]
        slow = await submit(live, {"command": command, "policy_rule_uri": "gated:0.0-dev"})
        await until_exists(started)  # the cycle is inside the placement of `slow`
        async with live.http.post(f"{live.url}/jobs/{slow}/cancel") as response:
            assert response.status == 200, await response.text()
        gate.touch()
        # the cycle handles `slow` before the job behind it: once that one completed,
        # whatever the cycle did with the late decision for `slow` has happened
        after = await submit(live, {"command": [PY, "-c", "pass"]})
        await wait_for(live, after, "completed")
        record = await wait_for(live, slow, "cancelled", "completed", "failed")
        history = await statuses(live, slow)
        async with live.http.get(f"{live.url}/fleet") as response:
            fleet = await response.json()
    assert record["status"] == "cancelled", record
    assert history == ["queued", "cancelled"], history
    assert not marker.exists(), "a cancelled job ran"
    assert fleet["totals"]["held"] == 0, "the late decision's GPUs are still held"
