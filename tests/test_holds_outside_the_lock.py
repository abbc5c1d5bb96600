"""A slow policy does not serialise the fleet (issue 21, item 5).

Before, the hold lock was held across a sandboxed policy's evaluation: one slow uploaded policy
delayed every hold and every job placement. Now a hold is decided over the fleet as it is and
reserved after (``AllocationService._reserve_decided``): other holds go on while a policy runs,
and a decision whose GPUs were taken meanwhile is made again, never held twice.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.conftest import Running, allocation, ask

FIXED = """
import time
CALLS = [0]

class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        CALLS[0] += 1
        if CALLS[0] == 1:  # only its first decision is slow
            time.sleep(parameters.get("sleep", 0))
        return {"cluster_id": "mixed-lab", "node_id": "mixed-lab-n00", "gpus": ["0"]}
"""


async def upload(running: Running, name: str) -> str:
    form = aiohttp.FormData()
    form.add_field(
        "record",
        json.dumps({"name": name, "version": "1.0", "release_tag": "t"}),
        content_type="application/json",
    )
    form.add_field("code", FIXED.encode(), filename="function.py")
    async with running.http.post(f"{running.url}/policies", data=form) as response:
        assert response.status == 201, await response.text()
    return f"{name}:1.0-t"


async def hold(running: Running, **fields: Any) -> dict[str, Any]:
    async with running.ws() as ws:
        return await ask(ws, allocation(adhoc=False, lease_seconds=60, **fields))


async def test_other_holds_go_on_while_a_policy_decides_and_a_raced_decision_is_made_again(
    running: Running, fleet: Any
) -> None:
    slow = await upload(running, "slow-gpu0")
    quick = await upload(running, "quick-gpu0")
    pending = asyncio.create_task(
        hold(running, policy_rule_uri=slow, clusters=["mixed-lab"], parameters={"sleep": 3})
    )
    await asyncio.sleep(0.5)  # the slow policy is deciding now
    # a built-in's hold is answered meanwhile (before, it waited for the slow policy)
    other = await hold(running, policy_rule_uri="binpack:1.0-stable", clusters=["a100-west"])
    assert other["success"], other
    # and so is a hold of the very GPU the slow policy is about to choose
    taken = await hold(running, policy_rule_uri=quick, clusters=["mixed-lab"])
    assert taken["success"], taken
    assert not pending.done()
    raced = await pending
    # the slow decision found its GPU held at reserve: it was decided again over the fleet as it
    # is now, where this policy's answer (the same GPU) is refused as held; the GPU is held once
    assert raced["error"]["code"] == "InvalidPolicyOutput", raced
    assert "already held" in raced["message"]
    context = running.server.context
    assert context is not None
    on_gpu0 = [
        h
        for h in context.holds.active()
        if any(p.node_id == "mixed-lab-n00" and "0" in (p.gpus or ()) for p in h.placements)
    ]
    assert [h.allocation_id for h in on_gpu0] == [taken["allocation_id"]]
