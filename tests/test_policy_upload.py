"""A seed-style policy uploaded as an archive answers over the WebSocket (CONTRACTS §3)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import aiohttp

from apportion.server.schemas import Ack, StoredPolicy
from tests.conftest import Running, allocation, ask

SEED_POLICY = Path(__file__).parent / "policies" / "seed_style"


def tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder / "code", arcname="code")
    return buffer.getvalue()


async def upload(
    running: Running, record: dict[str, Any], code: bytes, filename: str
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("record", __import__("json").dumps(record), content_type="application/json")
    form.add_field("code", code, filename=filename, content_type="application/octet-stream")
    return await running.http.post(f"{running.url}/policies", data=form)


RECORD = {
    "name": "seed-first-fit",
    "version": "1.0",
    "release_tag": "beta",
    "policy_parameters": {"prefer": "stored"},
    "management_commands_schema": [{"name": "get_state", "description": "show parameters"}],
}


async def push_metrics(running: Running, cluster_id: str) -> None:
    async with running.http.put(
        f"{running.url}/clusters/{cluster_id}/metrics", json={"nodes": []}
    ) as response:
        assert response.status == 200, await response.text()


async def test_seed_policy_archive_answers_over_the_websocket(running: Running, fleet: Any) -> None:
    for cluster in fleet:
        await push_metrics(running, cluster["id"])
    response = await upload(running, RECORD, tar_gz(SEED_POLICY), "policy.tar.gz")
    assert response.status == 201, await response.text()
    stored = await response.json()
    assert stored["policy_rule_uri"] == "seed-first-fit:1.0-beta"
    assert stored["source"] == "upload"

    async with running.ws() as ws:
        first = await ask(
            ws,
            allocation(
                policy_rule_uri="seed-first-fit:1.0-beta",
                inputs={"gpus": 2},
                clusters=["mixed-lab"],
                parameters={"prefer": "request"},
            ),
        )
        second = await ask(
            ws,
            allocation(
                policy_rule_uri="seed-first-fit:1.0-beta",
                inputs={"gpus": 2},
                clusters=["mixed-lab"],
            ),
        )
        manage = await ask(
            ws,
            {
                "type": "management",
                "policy_rule_uri": "seed-first-fit:1.0-beta",
                "action": "get_state",
            },
        )
    assert first["success"], first
    assert (
        first["data"]["cluster_id"] == "mixed-lab" and first["data"]["node_id"] == "mixed-lab-n00"
    )
    assert first["data"]["gpus"] == ["0", "1"]
    # the request's parameters override the stored ones (the seed's documented precedence)
    assert first["data"]["prefer"] == "request" and second["data"]["prefer"] == "stored"
    # context persists across calls
    assert second["data"]["calls"] == first["data"]["calls"] + 1
    assert manage["success"] and manage["data"] == {
        "status": "success",
        "parameters": {"prefer": "stored"},
    }


async def test_versions_are_immutable_and_builtins_undeletable(running: Running) -> None:
    code = (SEED_POLICY / "code" / "function.py").read_bytes()
    assert (await upload(running, RECORD, code, "function.py")).status == 201
    again = await upload(running, RECORD, code, "function.py")
    assert again.status == 409 and (await again.json())["error"]["code"] == "Conflict"
    async with running.http.delete(f"{running.url}/policies/binpack:1.0-stable") as response:
        assert response.status == 403
    async with running.http.get(f"{running.url}/policies") as response:
        uris = [p["policy_rule_uri"] for p in await response.json()]
    assert {
        "binpack:1.0-stable",
        "spread:1.0-stable",
        "topology:1.0-stable",
        "similarity:1.0-stable",
        "seed-first-fit:1.0-beta",
    } <= set(uris)


async def test_bad_uploads_are_refused_with_the_reason(running: Running) -> None:
    broken = b"class AIOSv1PolicyRule:\n    def __init__(self, rule_id):\n        pass\n    def eval(self, p, i, c):\n        return {}\n"
    response = await upload(running, RECORD | {"version": "2.0"}, broken, "function.py")
    assert response.status == 400
    body = await response.json()
    assert body["error"]["details"]["path"] == "code" and "__init__" in body["message"]
    # the refused version is not left in the store, and its URI is free: before, a refused
    # upload made it a tombstone (409 "was deleted" for the corrected code; issue 21, item 8)
    async with running.http.get(f"{running.url}/policies/seed-first-fit:2.0-beta") as r:
        assert r.status == 404
    fixed = await upload(running, RECORD | {"version": "2.0"}, tar_gz(SEED_POLICY), "p.tar.gz")
    assert fixed.status == 201, await fixed.text()

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../escape.py")
        payload = b"print('x')"
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    response = await upload(running, RECORD | {"version": "3.0"}, evil.getvalue(), "evil.tar.gz")
    assert response.status == 400 and (await response.json())["error"]["details"]["path"] == "code"

    response = await upload(running, {"name": "x"}, broken, "function.py")
    assert (
        response.status == 400
        and (await response.json())["error"]["details"]["path"] == "record.version"
    )


async def policy_events(running: Running) -> list[dict[str, Any]]:
    async with running.http.get(f"{running.url}/events?type=policy_updated") as response:
        assert response.status == 200
        events: list[dict[str, Any]] = (await response.json())["data"]
    return [{k: e[k] for k in ("policy_rule_uri", "change")} for e in events]


async def test_uploads_and_deletions_emit_policy_updated(running: Running) -> None:
    # the dashboard listens for policy_updated; before, nothing ever emitted it
    response = await upload(running, RECORD, tar_gz(SEED_POLICY), "policy.tar.gz")
    assert response.status == 201, await response.text()
    StoredPolicy.model_validate(await response.json())  # the answer the OpenAPI document names
    assert await policy_events(running) == [
        {"policy_rule_uri": "seed-first-fit:1.0-beta", "change": "created"}
    ]
    refused = await upload(running, RECORD, tar_gz(SEED_POLICY), "policy.tar.gz")
    assert refused.status == 409  # nothing changed, nothing emitted
    async with running.http.delete(f"{running.url}/policies/seed-first-fit:1.0-beta") as r:
        assert r.status == 200
        Ack.model_validate(await r.json())
    assert await policy_events(running) == [
        {"policy_rule_uri": "seed-first-fit:1.0-beta", "change": "created"},
        {"policy_rule_uri": "seed-first-fit:1.0-beta", "change": "deleted"},
    ]
