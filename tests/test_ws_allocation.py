"""The allocation WebSocket against a real server on 127.0.0.1:0 (CONTRACTS §2)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apportion import jsonutil
from tests.conftest import ADMIN_KEY, Running, allocation, ask


async def test_seed_request_answers_cluster_node_and_gpus(running: Running, fleet: Any) -> None:
    async with running.ws() as ws:
        answer = await ask(
            ws, allocation(inputs={"gpus": 2, "gpu_model": "A100"}, request_id="r-1")
        )
    assert answer["success"] is True, answer
    assert answer["request_id"] == "r-1"
    data = answer["data"]
    # binpack over an empty fleet: every A100 node has 8 free; the tie breaks by
    # (cluster_id, node_id) so the first a100-west node wins, GPUs 0 and 1.
    assert data == {"cluster_id": "a100-west", "node_id": "a100-west-n00", "gpus": ["0", "1"]}
    assert "allocation_id" not in answer


async def test_many_requests_in_flight_on_one_connection(running: Running, fleet: Any) -> None:
    async with running.ws() as ws:
        for i in range(30):
            await ws.send(
                jsonutil.dumps_str(allocation(request_id=f"r-{i}", inputs={"gpus": 1 + i % 4}))
            )
        answers = [jsonutil.loads(await ws.recv()) for _ in range(30)]
    assert sorted(a["request_id"] for a in answers) == sorted(f"r-{i}" for i in range(30))
    by_id = {a["request_id"]: a for a in answers}
    for i in range(30):
        assert by_id[f"r-{i}"]["success"] is True
        assert len(by_id[f"r-{i}"]["data"]["gpus"]) == 1 + i % 4


async def test_holds_never_share_a_gpu_under_concurrency(running: Running, fleet: Any) -> None:
    # dgx-east has 16 nodes × 8 H100 = 128 GPUs; 40 concurrent holds of 4 H100s ask for 160,
    # so exactly 32 succeed and 8 are told NoFeasiblePlacement — and no GPU is held twice.
    async def one(i: int) -> dict[str, Any]:
        async with running.ws() as ws:
            return await ask(
                ws,
                allocation(
                    adhoc=False, request_id=f"h{i}", inputs={"gpus": 4, "gpu_model": "H100"}
                ),
            )

    answers = await asyncio.gather(*(one(i) for i in range(40)))
    won = [a for a in answers if a["success"]]
    lost = [a for a in answers if not a["success"]]
    assert len(won) == 32
    assert {a["error"]["code"] for a in lost} == {"NoFeasiblePlacement"}
    gpus = [(a["data"]["node_id"], g) for a in won for g in a["data"]["gpus"]]
    assert len(gpus) == len(set(gpus)) == 128
    assert len({a["allocation_id"] for a in won}) == 32


async def test_release_and_renew(running: Running, fleet: Any) -> None:
    async with running.ws() as ws:
        held = await ask(ws, allocation(adhoc=False, clusters=["mixed-lab"], inputs={"gpus": 8}))
        assert held["success"], held
        node = held["data"]["node_id"]
        again = await ask(
            ws,
            allocation(
                clusters=["mixed-lab"],
                inputs={
                    "gpus": 8,
                    "node_filter": {"variable": "id", "operator": "==", "value": node},
                },
            ),
        )
        assert again["error"]["code"] == "NoFeasiblePlacement"

        renewed = await ask(
            ws, {"type": "renew", "allocation_id": held["allocation_id"], "lease_seconds": 120}
        )
        assert renewed["success"] and renewed["data"]["expires_at"] > held["expires_at"]

        released = await ask(
            ws, {"type": "release", "allocation_id": held["allocation_id"], "request_id": "x"}
        )
        assert released == {
            "success": True,
            "data": {"allocation_id": held["allocation_id"], "released": True},
            "request_id": "x",
        }
        free = await ask(
            ws,
            allocation(
                clusters=["mixed-lab"],
                inputs={
                    "gpus": 8,
                    "node_filter": {"variable": "id", "operator": "==", "value": node},
                },
            ),
        )
        assert free["success"] and free["data"]["node_id"] == node

        gone = await ask(ws, {"type": "release", "allocation_id": held["allocation_id"]})
        assert gone["error"]["code"] == "UnknownAllocation"


async def test_expired_lease_frees_its_gpus(running: Running, fleet: Any) -> None:
    pin = {"variable": "id", "operator": "==", "value": "mixed-lab-n00"}
    async with running.ws() as ws:
        held = await ask(
            ws,
            allocation(
                adhoc=False,
                lease_seconds=2.0,  # outlives the next request however loaded the machine
                clusters=["mixed-lab"],
                inputs={"gpus": 8, "node_filter": pin},
            ),
        )
        assert held["success"], held
        blocked = await ask(
            ws, allocation(clusters=["mixed-lab"], inputs={"gpus": 1, "node_filter": pin})
        )
        assert blocked["error"]["code"] == "NoFeasiblePlacement"
        for _ in range(300):  # 30 s at least: a generous deadline for the expiry loop
            await asyncio.sleep(0.1)
            answer = await ask(
                ws, allocation(clusters=["mixed-lab"], inputs={"gpus": 8, "node_filter": pin})
            )
            if answer["success"]:
                break
        assert answer["success"], "the lease ended but the GPUs were not freed"
        renew = await ask(ws, {"type": "renew", "allocation_id": held["allocation_id"]})
        assert renew["error"]["code"] == "UnknownAllocation"


async def test_user_settings_never_reach_engine_state(running: Running, fleet: Any) -> None:
    # the keys the engine once injected into a built-in's settings are the user's own now:
    # "unavailable" used to reach the placement kernel (PolicyError for a list of lists), and
    # "fleet" / "outcome_sink" to stand in for the engine's view and its explain record
    plain = allocation(inputs={"gpus": 2, "gpu_model": "A100"}, explain=True)
    settings = {
        "unavailable": [["a100-west", "a100-west-n00", "0"]],
        "fleet": {},
        "outcome_sink": 1,
    }
    async with running.ws() as ws:
        expected = await ask(ws, plain)
        answer = await ask(ws, {**plain, "settings": settings})
    assert expected["success"] is True, expected
    assert answer["success"] is True, answer
    # GPU 0 of the first A100 node is still the choice: nothing the user sent was unavailable
    assert answer["data"] == expected["data"]
    assert answer["data"] == {
        "cluster_id": "a100-west",
        "node_id": "a100-west-n00",
        "gpus": ["0", "1"],
    }
    assert answer["explain"]["feasible_nodes"] == expected["explain"]["feasible_nodes"] > 0


async def test_explain_lists_rejected_nodes_with_reasons(running: Running, fleet: Any) -> None:
    async with running.ws() as ws:
        answer = await ask(
            ws,
            allocation(
                explain=True, clusters=["mixed-lab"], inputs={"gpus": 2, "gpu_model": "L40S"}
            ),
        )
    assert answer["success"], answer
    record = answer["explain"]
    assert record["policy_rule_uri"] == "binpack:1.0-stable"
    assert record["candidate_clusters"] == 1
    # mixed-lab: 12 nodes, the odd ones are V100 boxes → 6 rejected for their model.
    assert record["candidate_nodes"] == 12 and record["feasible_nodes"] == 6
    assert len(record["rejected"]) == 6
    assert all(
        r["reasons"] and r["node_id"].endswith(("1", "3", "5", "7", "9"))
        for r in record["rejected"]
    )
    assert set(record["timings_ms"]) >= {"candidates", "evaluate", "validate"}


async def test_no_feasible_placement_names_the_reasons(running: Running, fleet: Any) -> None:
    async with running.ws() as ws:
        answer = await ask(ws, allocation(inputs={"gpus": 9}))
    assert answer["success"] is False
    assert answer["error"]["code"] == "NoFeasiblePlacement"
    assert answer["error"]["details"]["rejections"], answer
    assert "9" in answer["message"]


async def test_management_reaches_a_builtin(running: Running) -> None:
    async with running.ws() as ws:
        answer = await ask(
            ws,
            {
                "type": "management",
                "policy_rule_uri": "binpack:1.0-stable",
                "action": "describe",
                "data": {},
            },
        )
    assert answer["success"] is True, answer
    assert answer["data"]["status"] == "success"


async def test_handshake_without_or_with_a_wrong_key_is_refused(running: Running) -> None:
    for key in (None, "wrong-key-0123456789abcdef"):
        with pytest.raises(InvalidStatus) as caught:
            async with running.ws(key=key):
                pass
        assert caught.value.response.status_code == 401


async def test_read_key_may_ask_but_not_hold(running: Running, fleet: Any) -> None:
    async with running.http.post(
        f"{running.url}/keys", json={"name": "reader", "scope": "read"}
    ) as r:
        assert r.status == 201
        reader = (await r.json())["data"]["api_key"]
    async with running.ws(key=reader) as ws:
        assert (await ask(ws, allocation()))["success"] is True
        held = await ask(ws, allocation(adhoc=False))
        assert held["error"]["code"] == "Forbidden"
        assert "submit" in held["message"]


async def test_message_over_the_size_limit_closes_with_1009(tmp_path: Any) -> None:
    from tests.conftest import running_server

    async with running_server(tmp_path / "d", max_message_bytes=4096) as live, live.ws() as ws:
        await ws.send(jsonutil.dumps_str(allocation(inputs={"pad": "x" * 5000})))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_one_clients_bad_message_never_hurts_another(running: Running, fleet: Any) -> None:
    async with running.ws() as bad, running.ws() as good:
        await bad.send("{not json")
        answer = await ask(good, allocation(request_id="fine"))
        assert answer["success"] and answer["request_id"] == "fine"
        broken = jsonutil.loads(await bad.recv())
        assert broken["error"]["code"] == "InvalidJSON"
        assert (await ask(bad, allocation()))["success"]


async def test_rest_mirror_answers_the_same_envelope(running: Running, fleet: Any) -> None:
    body = allocation(inputs={"gpus": 2, "gpu_model": "A100"}, request_id="rest-1")
    async with running.http.post(f"{running.url}/allocate", json=body) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["data"] == {
        "cluster_id": "a100-west",
        "node_id": "a100-west-n00",
        "gpus": ["0", "1"],
    }
    assert answer["request_id"] == "rest-1"
    async with running.http.post(
        f"{running.url}/allocate", json=allocation(policy_rule_uri="nope:1.0-x")
    ) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "UnknownPolicy"
    async with running.http.post(
        f"{running.url}/allocate", json=allocation(), headers={"Authorization": ""}
    ) as r:
        assert r.status == 401
    assert ADMIN_KEY
