"""Policies that raise, loop, die or lie never take the server down (CONTRACTS §2–3)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apportion.engine.decisions import Outcome
from apportion.engine.requests import parse_inputs
from apportion.errors import PolicyError
from apportion.policies.records import PolicyRecord
from apportion.policies.runtime import PolicyRuntime
from apportion.policies.store import PolicyEntry
from apportion.registry.fleet import FleetView
from tests.conftest import Running, allocation, ask, running_server

TEMPLATE = """
import os

class AIOSv1PolicyRule:
    def __init__(self, rule_id, settings, parameters):
        self.settings = settings

    def eval(self, parameters, input_data, context):
{body}
"""

BODIES = {
    "raises": "        raise ValueError('the policy is broken on purpose')",
    "loops": "        while True:\n            pass",
    "exits": "        os._exit(3)",
    "ghost-gpu": "        return {'cluster_id': 'mixed-lab', 'node_id': 'mixed-lab-n00', 'gpus': ['42']}",
    "foreign-node": "        return {'cluster_id': 'mixed-lab', 'node_id': 'dgx-east-n00', 'gpus': ['0']}",
    "n00-all": "        return {'cluster_id': 'mixed-lab', 'node_id': 'mixed-lab-n00', "
    "'gpus': [str(i) for i in range(8)]}",
}


async def upload(running: Running, name: str) -> str:
    form = aiohttp.FormData()
    form.add_field(
        "record",
        json.dumps({"name": name, "version": "1.0", "release_tag": "t"}),
        content_type="application/json",
    )
    form.add_field("code", TEMPLATE.format(body=BODIES[name]).encode(), filename="function.py")
    async with running.http.post(f"{running.url}/policies", data=form) as response:
        assert response.status == 201, await response.text()
    return f"{name}:1.0-t"


async def test_failing_policies_get_their_codes_and_others_are_served(tmp_path: Path) -> None:
    # 5 s: long enough that the other client is surely served while the loop still runs
    async with running_server(tmp_path / "d", policy_timeout=5.0, sandbox_workers=2) as live:
        await live.load_demo_fleet()
        uris = {name: await upload(live, name) for name in BODIES}

        async with live.ws() as ws:
            raised = await ask(ws, allocation(policy_rule_uri=uris["raises"]))
            assert raised["error"]["code"] == "PolicyError"
            assert "broken on purpose" in raised["message"]
            assert raised["error"]["details"]["policy_rule_uri"] == uris["raises"]

            # a looping policy is stopped after the timeout while another client is served
            loop_task = asyncio.create_task(ask(ws, allocation(policy_rule_uri=uris["loops"])))
            async with live.ws() as other:
                served = await ask(other, allocation(request_id="meanwhile"))
            assert served["success"] and not loop_task.done()
            timed_out = await asyncio.wait_for(loop_task, 30)
            assert timed_out["error"]["code"] == "PolicyTimeout"
            assert "5.0 s" in timed_out["message"] and "stopped" in timed_out["message"]

            died = await ask(ws, allocation(policy_rule_uri=uris["exits"]))
            assert died["error"]["code"] == "PolicyError" and "3" in died["message"]

            ghost = await ask(
                ws, allocation(policy_rule_uri=uris["ghost-gpu"], clusters=["mixed-lab"])
            )
            assert ghost["error"]["code"] == "InvalidPolicyOutput" and "42" in ghost["message"]
            foreign = await ask(
                ws, allocation(policy_rule_uri=uris["foreign-node"], clusters=["mixed-lab"])
            )
            assert foreign["error"]["code"] == "InvalidPolicyOutput"

            # a policy that returns GPUs someone else holds cannot hold them
            held = await ask(
                ws, allocation(adhoc=False, policy_rule_uri=uris["n00-all"], clusters=["mixed-lab"])
            )
            assert held["success"], held
            again = await ask(
                ws, allocation(adhoc=False, policy_rule_uri=uris["n00-all"], clusters=["mixed-lab"])
            )
            assert again["error"]["code"] == "InvalidPolicyOutput" and "held" in again["message"]

            # after all that, the server still answers
            assert (await ask(ws, allocation()))["success"]


async def test_a_policys_traceback_is_for_its_author_and_the_log_only(
    running: Running, fleet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # before, any read key's request got the policy's traceback (its code and paths)
    caplog.set_level(logging.INFO, logger="apportion.server.dispatch")
    uri = await upload(running, "raises")
    keys = {}
    for scope in ("read", "policies"):
        async with running.http.post(
            f"{running.url}/keys", json={"name": f"a {scope} key", "scope": scope}
        ) as response:
            keys[scope] = (await response.json())["data"]["api_key"]
    seen = {}
    for who, key in (("read", keys["read"]), ("policies", keys["policies"]), ("admin", None)):
        async with running.ws(key) if key else running.ws() as ws:
            seen[who] = await ask(ws, allocation(policy_rule_uri=uri))
    for answer in seen.values():
        assert answer["error"]["code"] == "PolicyError" and "broken on purpose" in answer["message"]
    assert "traceback" not in seen["read"]["error"]["details"]
    assert seen["read"]["error"]["details"]["exception_type"] == "ValueError"
    for author in ("policies", "admin"):
        assert "broken on purpose" in seen[author]["error"]["details"]["traceback"]
    assert any("broken on purpose" in r.getMessage() and "Traceback" in r.getMessage()
               for r in caplog.records)  # fmt: skip


async def test_search_with_the_similarity_policy(running: Running, fleet: Any) -> None:
    search = {
        "matchType": "cluster",
        "rankingPolicyRule": {
            "policyRuleURI": "similarity:1.0-stable",
            "parameters": {
                "filterRule": {"variable": "tags", "operator": "==", "value": "demo"},
                # scaled by the column maxima, dgx-east is (1, 1), a100-west (1, 0.5) and
                # mixed-lab (0.75, 0.375): only dgx-east points the target's way (cosine 1 vs 0.949)
                "target": {"gpus": 128, "gpu_memory": 16 * 8 * 81920},
                "return": 1,
            },
        },
    }
    async with running.ws() as ws:
        answer = await ask(ws, allocation(search=search, inputs={"gpus": 1}, explain=True))
    assert answer["success"], answer
    # only one candidate survives the ranking: the cluster with the most GPU memory (dgx-east)
    assert answer["data"]["cluster_id"] == "dgx-east"
    assert answer["explain"]["candidate_clusters"] == 1


async def test_gang_placement_over_the_websocket(running: Running, fleet: Any) -> None:
    gang = {"requests": [{"gpus": 8, "gpu_model": "A100"}, {"gpus": 8, "gpu_model": "A100"}]}
    async with running.ws() as ws:
        answer = await ask(ws, allocation(adhoc=False, inputs=gang))
    assert answer["success"], answer
    nodes = [p["node_id"] for p in answer["data"]]
    assert nodes == ["a100-west-n00", "a100-west-n01"]


async def test_rate_limit_answers_rate_limited(tmp_path: Path) -> None:
    async with running_server(tmp_path / "d", rate_limit_per_second=5.0) as live, live.ws() as ws:
        for i in range(40):
            await ws.send(json.dumps(allocation(request_id=str(i))))
        answers = [json.loads(await ws.recv()) for _ in range(40)]
    codes = [a.get("error", {}).get("code") for a in answers]
    assert "RateLimited" in codes
    limited = next(a for a in answers if a.get("error", {}).get("code") == "RateLimited")
    assert limited["request_id"] is not None


class _BrokenPlacement:
    """An internal-protocol policy with a bug."""

    name = "broken"

    def place(self, *args: Any) -> Outcome:
        raise ZeroDivisionError("a bug in the kernel")


def test_a_builtin_that_raises_is_a_policy_error_naming_it() -> None:
    # "no" is an outcome; raising through the internal protocol is "broken", named
    record = PolicyRecord(name="broken", version="1.0", release_tag="stable")
    entry = PolicyEntry(record, "builtin", placer=_BrokenPlacement())
    with pytest.raises(PolicyError) as err:
        PolicyRuntime.place(entry, FleetView(), [], parse_inputs({})[0])
    assert err.value.details["policy_rule_uri"] == "broken:1.0-stable"
    assert err.value.details["exception_type"] == "ZeroDivisionError"
    assert "policy broken:1.0-stable raised ZeroDivisionError: a bug" in err.value.message
