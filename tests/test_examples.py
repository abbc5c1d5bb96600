"""Every example runs: the seed WebSocket client, the custom policy (from --policy-dir and uploaded)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import ADMIN_KEY, Running, allocation, ask, running_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LEAST_LOADED = EXAMPLES / "policies" / "least_loaded"


async def run_example(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "APPORTION_API_KEY": ADMIN_KEY},
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


async def test_seed_websocket_client_example(running: Running, fleet: Any) -> None:
    code, out = await run_example(str(EXAMPLES / "ws_client.py"), running.ws_url)
    assert code == 0, out
    assert '"success": true' in out and '"cluster_id": "a100-west"' in out


async def test_custom_policy_from_policy_dir_with_management(tmp_path: Path) -> None:
    async with running_server(tmp_path / "d", policy_dir=EXAMPLES / "policies") as live:
        await live.load_demo_fleet()
        uri = "least-loaded:1.0-example"
        async with live.ws() as ws:
            first = await ask(ws, allocation(policy_rule_uri=uri, clusters=["mixed-lab"]))
            assert first["success"], first
            # no metrics yet: every node counts as idle, ties by (cluster, node) → n00
            assert first["data"]["node_id"] == "mixed-lab-n00"
            denied = await ask(
                ws,
                {
                    "type": "management",
                    "policy_rule_uri": uri,
                    "action": "deny_node",
                    "data": {"node_id": "mixed-lab-n00"},
                },
            )
            assert denied["data"]["denied_nodes"] == ["mixed-lab-n00"]
            second = await ask(ws, allocation(policy_rule_uri=uri, clusters=["mixed-lab"]))
            assert second["data"]["node_id"] == "mixed-lab-n01"
            unknown = await ask(
                ws, {"type": "management", "policy_rule_uri": uri, "action": "reboot"}
            )
            assert unknown["data"] == {"status": "error", "message": "Unknown action 'reboot'"}


async def test_custom_policy_uploaded_as_archive(running: Running, fleet: Any) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        archive.add(LEAST_LOADED / "code", arcname="least_loaded/code")
    form = aiohttp.FormData()
    form.add_field(
        "record", (LEAST_LOADED / "policy.json").read_text(), content_type="application/json"
    )
    form.add_field("code", buffer.getvalue(), filename="least_loaded.tar.xz")
    async with running.http.post(f"{running.url}/policies", data=form) as response:
        assert response.status == 201, await response.text()
    busy = {
        "nodes": [
            {
                "id": "mixed-lab-n00",
                "gpus": [
                    {
                        "gpu_id": i,
                        "usedMem": 1,
                        "freeMem": 49151,
                        "totalMem": 49152,
                        "cudaUtilization": 95,
                    }
                    for i in range(8)
                ],
            }
        ]
    }
    async with running.http.put(f"{running.url}/clusters/mixed-lab/metrics", json=busy) as response:
        assert response.status == 200
    code, out = await run_example(
        str(EXAMPLES / "ws_client.py"), running.ws_url, "least-loaded:1.0-example"
    )
    assert code == 0, out
    # every cluster is a candidate; a100-west has no metrics (idle) and sorts first
    assert '"cluster_id": "a100-west", "node_id": "a100-west-n00"' in out
    # within mixed-lab, n00 runs at 95 % > max_utilization 90, so the sandboxed policy skips it
    async with running.ws() as ws:
        answer = await ask(
            ws, allocation(policy_rule_uri="least-loaded:1.0-example", clusters=["mixed-lab"])
        )
    assert answer["data"]["node_id"] == "mixed-lab-n01", answer


async def test_policy_dir_hot_reload(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    (policy_dir / "fixed" / "code").mkdir(parents=True)
    source = policy_dir / "fixed" / "code" / "function.py"
    template = (
        "class AIOSv1PolicyRule:\n"
        "    def __init__(self, rule_id, settings, parameters):\n        pass\n"
        "    def eval(self, parameters, input_data, context):\n"
        "        return {{'cluster_id': 'mixed-lab', 'node_id': '{node}', 'gpus': ['0']}}\n"
    )
    source.write_text(template.format(node="mixed-lab-n03"))
    async with running_server(
        tmp_path / "d", policy_dir=policy_dir, policy_dir_poll_seconds=0.2
    ) as live:
        await live.load_demo_fleet()
        async with live.ws() as ws:
            first = await ask(ws, allocation(policy_rule_uri="fixed:0.0-dev"))
            assert first["data"]["node_id"] == "mixed-lab-n03"
            source.write_text(template.format(node="mixed-lab-n04") + "\n# changed\n")
            for _ in range(300):  # 30 s at least: a generous deadline for the reload
                await asyncio.sleep(0.1)
                answer = await ask(ws, allocation(policy_rule_uri="fixed:0.0-dev"))
                if answer["success"] and answer["data"]["node_id"] == "mixed-lab-n04":
                    break
            assert answer["data"]["node_id"] == "mixed-lab-n04"
            # a policy returning a node of another cluster is refused, naming the problem
            source.write_text(template.format(node="dgx-east-n00"))
            for _ in range(300):
                await asyncio.sleep(0.1)
                answer = await ask(ws, allocation(policy_rule_uri="fixed:0.0-dev"))
                if not answer["success"]:
                    break
            assert answer["error"]["code"] == "InvalidPolicyOutput", answer


async def test_policy_dir_changes_are_announced_as_policy_updated(tmp_path: Path) -> None:
    """A folder added, changed and removed under --policy-dir is announced like an upload."""
    policy_dir = tmp_path / "policies"

    def write(name: str, node: str) -> None:
        (policy_dir / name / "code").mkdir(parents=True, exist_ok=True)
        (policy_dir / name / "code" / "function.py").write_text(
            "class AIOSv1PolicyRule:\n"
            "    def __init__(self, rule_id, settings, parameters):\n        pass\n"
            "    def eval(self, parameters, input_data, context):\n"
            f"        return {{'cluster_id': 'mixed-lab', 'node_id': '{node}', 'gpus': ['0']}}\n"
        )

    write("kept", "mixed-lab-n03")
    async with running_server(
        tmp_path / "d", policy_dir=policy_dir, policy_dir_poll_seconds=0.1
    ) as live:

        async def announced() -> list[tuple[str, str]]:
            async with live.http.get(f"{live.url}/events", params={"since": "0"}) as response:
                assert response.status == 200
                events = (await response.json())["data"]
            return [
                (e["policy_rule_uri"], e["change"]) for e in events if e["type"] == "policy_updated"
            ]

        async def until(expected: list[tuple[str, str]]) -> None:
            for _ in range(300):  # 30 s: a generous deadline for a 0.1 s rescan
                if await announced() == expected:
                    return
                await asyncio.sleep(0.1)
            assert await announced() == expected

        assert await announced() == []  # the start-up scan announces nothing
        write("added", "mixed-lab-n04")
        await until([("added:0.0-dev", "created")])
        write("kept", "mixed-lab-n05")
        await until([("added:0.0-dev", "created"), ("kept:0.0-dev", "replaced")])
        for file in (policy_dir / "added" / "code").iterdir():
            file.unlink()
        (policy_dir / "added" / "code").rmdir()
        (policy_dir / "added").rmdir()
        await until(
            [
                ("added:0.0-dev", "created"),
                ("kept:0.0-dev", "replaced"),
                ("added:0.0-dev", "deleted"),
            ]
        )
