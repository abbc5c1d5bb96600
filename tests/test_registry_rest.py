"""Cluster documents and metrics over REST (CONTRACTS §4), against a real server."""

from __future__ import annotations

import copy
from typing import Any

from apportion.demo import demo_clusters
from tests.conftest import Running


async def test_cluster_lifecycle(running: Running) -> None:
    doc = demo_clusters()[2]
    url = running.url
    async with running.http.post(f"{url}/clusters", json=doc) as r:
        assert r.status == 201
        stored = await r.json()
    # aggregates computed: 12 nodes × 8 GPUs
    assert stored["gpus"]["count"] == 96
    async with running.http.post(f"{url}/clusters", json=doc) as r:
        assert r.status == 409 and (await r.json())["error"]["code"] == "Conflict"
    async with running.http.get(f"{url}/clusters/{doc['id']}") as r:
        assert r.status == 200 and (await r.json())["id"] == doc["id"]

    changed = copy.deepcopy(doc)
    changed["status"] = "maintenance"
    async with running.http.put(f"{url}/clusters/{doc['id']}", json=changed) as r:
        assert r.status == 200 and (await r.json())["status"] == "maintenance"
    async with running.http.post(
        f"{url}/clusters/query",
        json={"query": {"variable": "status", "operator": "==", "value": "maintenance"}},
    ) as r:
        assert [c["id"] for c in await r.json()] == [doc["id"]]
    async with running.http.delete(f"{url}/clusters/{doc['id']}") as r:
        assert r.status == 200
    async with running.http.get(f"{url}/clusters/{doc['id']}") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "NotFound"


async def test_aggregate_mismatch_is_422_with_the_computed_value(running: Running) -> None:
    doc = demo_clusters()[2]
    doc["gpus"] = {"count": 7, "memory": 1}
    async with running.http.post(f"{running.url}/clusters", json=doc) as r:
        assert r.status == 422
        body = await r.json()
    assert body["error"]["code"] == "InvalidRequest"
    assert body["error"]["details"]["path"].startswith("body.gpus")
    assert "96" in body["message"]


async def test_bad_bodies(running: Running) -> None:
    async with running.http.post(
        f"{running.url}/clusters", data=b"{oops", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "InvalidJSON"
    async with running.http.post(f"{running.url}/clusters/query", json={"q": {}}) as r:
        assert r.status == 400 and (await r.json())["error"]["details"]["path"] == "body.query"
    async with running.http.get(f"{running.url}/no/such/route") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "NotFound"


async def test_metrics_push_read_query_and_staleness(running: Running, fleet: Any) -> None:
    url = running.url
    metrics = {
        "nodes": [
            {
                "id": "mixed-lab-n00",
                "gpus": [
                    {
                        "gpu_id": i,
                        "usedMem": 1000,
                        "freeMem": 48152,
                        "totalMem": 49152,
                        "cudaUtilization": 50,
                    }
                    for i in range(8)
                ],
            }
        ]
    }
    async with running.http.put(f"{url}/clusters/mixed-lab/metrics", json=metrics) as r:
        assert r.status == 200, await r.text()
    async with running.http.get(f"{url}/cluster/mixed-lab") as r:
        body = await r.json()
    assert body["success"] is True
    assert body["data"]["clusterId"] == "mixed-lab" and body["data"]["stale"] is False
    async with running.http.post(
        f"{url}/cluster/query",
        json={"variable": "clusterId", "operator": "==", "value": "mixed-lab"},
    ) as r:
        assert [d["clusterId"] for d in (await r.json())["data"]] == ["mixed-lab"]
    async with running.http.get(f"{url}/cluster/a100-west") as r:
        assert r.status == 404
    async with running.http.put(f"{url}/clusters/ghost/metrics", json=metrics) as r:
        assert r.status == 404


async def test_free_memory_from_metrics_steers_placement(running: Running, fleet: Any) -> None:
    # Node n00 reports 1 GB free on every GPU: a request for 40 GB per GPU must go elsewhere.
    url = running.url
    busy = {
        "nodes": [
            {
                "id": "mixed-lab-n00",
                "gpus": [
                    {"gpu_id": i, "usedMem": 48152, "freeMem": 1000, "totalMem": 49152}
                    for i in range(8)
                ],
            }
        ]
    }
    async with running.http.put(f"{url}/clusters/mixed-lab/metrics", json=busy) as r:
        assert r.status == 200
    body = {
        "policy_rule_uri": "binpack:1.0-stable",
        "clusters": ["mixed-lab"],
        "inputs": {"gpus": 1, "gpu_memory_mb": 40000, "gpu_model": "L40S"},
    }
    async with running.http.post(f"{url}/allocate", json=body) as r:
        answer = await r.json()
    assert answer["data"]["node_id"] == "mixed-lab-n02"


async def test_healthz_and_openapi_need_no_key_but_clusters_do(running: Running) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{running.url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with anonymous.get(f"{running.url}/openapi.json") as r:
            paths = (await r.json())["paths"]
        assert {"/clusters", "/clusters/{cluster_id}", "/allocate", "/policies"} <= set(paths)
        async with anonymous.get(f"{running.url}/clusters") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        async with anonymous.get(
            f"{running.url}/clusters", headers={"Authorization": "Token nope-nope-nope-nope"}
        ) as r:
            assert r.status == 401
