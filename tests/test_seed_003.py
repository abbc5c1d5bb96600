"""Seed 003's surface (Rescale's ``/api/v2/``), driven the way its tutorial drives Rescale
(issue 12): ``Authorization: Token``, upload inputs to ``files/contents/``, create a job from a
job definition, submit it, poll ``statuses/`` page by page until ``Completed``, find its
outputs with ``files/?search=``, read one with ``lines/`` and fetch a range of it; stop and
delete. On a real server with the real local adapter.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest

from tests.conftest import ADMIN_KEY, Running

CALCULATE = b"import sys\nn = int(open(sys.argv[1]).read())\nprint('sum', sum(range(n)))\n"
TOKEN = {"Authorization": f"Token {ADMIN_KEY}"}


async def all_pages(http: aiohttp.ClientSession, url: str, **params: str) -> list[Any]:
    """The tutorial's get_all_result_pages: follow ``next`` until null."""
    results: list[Any] = []
    async with http.get(url, params=params) as response:
        page = await response.json()
        assert response.status == 200, page
    results += page["results"]
    while page["next"] is not None:
        async with http.get(page["next"]) as response:
            page = await response.json()
        results += page["results"]
    return results


async def upload(http: aiohttp.ClientSession, url: str, name: str, content: bytes) -> str:
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", content, filename=name, content_type="application/octet-stream")
    async with http.post(f"{url}/api/v2/files/contents/", data=form) as response:
        uploaded = await response.json()
        assert response.status == 201, uploaded
    assert uploaded["fileChecksums"] == [
        {"hashFunction": "sha512", "fileHash": hashlib.sha512(content).hexdigest()}
    ]
    assert uploaded["typeId"] == 1 and uploaded["decryptedSize"] == len(content)
    return str(uploaded["id"])


async def test_the_tutorials_flow(running: Running, fleet: Any) -> None:
    api = f"{running.url}/api/v2"
    async with aiohttp.ClientSession(headers=TOKEN) as http:
        script = await upload(http, running.url, "calculate.py", CALCULATE)
        numbers = await upload(http, running.url, "range.inp", b"1000\n")
        definition = {
            "name": "Rescale UserApi Reference Tutorial",
            "jobanalyses": [
                {
                    "analysis": {"code": "user_included", "version": "0"},
                    "command": "python3 calculate.py range.inp > result.txt && echo done",
                    "hardware": {"coreType": "granite", "coresPerSlot": 1, "walltime": 1},
                }
            ],
            "projectId": None,
        }
        async with http.post(f"{api}/jobs/", json=definition) as response:
            created = await response.json()
            assert response.status == 201, created
        job_id = created["id"]
        # as the tutorial: the inputs were forgotten; the saved job is updated, then submitted
        definition["jobanalyses"][0]["inputFiles"] = [{"id": script}, {"id": numbers}]
        async with http.patch(f"{api}/jobs/{job_id}/", json=definition) as response:
            updated = await response.json()
            assert response.status == 200, updated
        assert [f["id"] for f in updated["jobanalyses"][0]["inputFiles"]] == [script, numbers]
        assert created["jobStatus"]["content"] == "Pending"  # created, not submitted
        assert created["jobanalyses"][0]["command"] == definition["jobanalyses"][0]["command"]
        assert created["jobanalyses"][0]["hardware"]["walltime"] == 1
        async with http.post(f"{api}/jobs/{job_id}/submit/") as response:
            assert response.status == 200
        for _ in range(600):
            statuses = await all_pages(http, f"{api}/jobs/{job_id}/statuses/", page_size="2")
            if statuses[-1]["status"] == "Completed":
                break
            await asyncio.sleep(0.05)
        names = [s["status"] for s in statuses]
        assert names == ["Pending", "Queued", "Started", "Executing", "Completed"], statuses
        assert "completed" in statuses[-1]["statusReason"]
        outputs = await all_pages(http, f"{api}/jobs/{job_id}/files/", search="result")
        assert [f["name"] for f in outputs] == ["result.txt"] and outputs[0]["typeId"] == 5
        async with http.get(f"{api}/files/{outputs[0]['id']}/lines/") as response:
            assert (await response.json())["lines"] == ["sum 499500\n"]
        ranged = {"Range": "bytes=0-2"}
        async with http.get(f"{api}/files/{outputs[0]['id']}/contents/", headers=ranged) as r:
            assert r.status == 206 and await r.read() == b"sum"
        # its output is kept as process_output.log, as Rescale keeps it
        (log,) = await all_pages(http, f"{api}/jobs/{job_id}/files/", search="process_output")
        assert log["name"] == "process_output.log" and log["typeId"] == 5
        async with http.get(f"{api}/files/{log['id']}/lines/") as response:
            assert (await response.json())["lines"] == ["done\n"]
        clusters = await all_pages(http, f"{api}/jobs/{job_id}/cluster_statuses/")
        assert [c["status"] for c in clusters] == [
            "Not Started",
            "Queued",
            "Starting",
            "Started",
            "Stopped",
        ]
        async with http.get(f"{api}/jobs/{job_id}/instances/") as response:
            (instance,) = await response.json()
        assert (instance["role"], instance["id"]) == ("MPI_MASTER", f"{job_id}-0")
        assert instance["clusterId"] in {c["id"] for c in fleet}
        every = await all_pages(http, f"{api}/files/", page_size="1")
        assert {f["name"] for f in every} >= {"calculate.py", "range.inp", "result.txt"}
        async with http.delete(f"{api}/jobs/{job_id}/") as response:
            assert response.status == 200
        async with http.get(f"{api}/jobs/{job_id}/") as response:
            assert response.status == 404


async def test_a_running_job_is_stopped_and_only_then_deleted(running: Running, fleet: Any) -> None:
    api = f"{running.url}/api/v2"
    definition = {"name": "forever", "jobanalyses": [{"command": "sleep 300"}]}
    async with aiohttp.ClientSession(headers=TOKEN) as http:
        async with http.post(f"{api}/jobs/", json=definition) as response:
            job_id = (await response.json())["id"]
        async with http.post(f"{api}/jobs/{job_id}/submit/") as response:
            assert response.status == 200
        for _ in range(600):
            async with http.get(f"{api}/jobs/{job_id}/") as response:
                if (await response.json())["jobStatus"]["content"] == "Executing":
                    break
            await asyncio.sleep(0.05)
        async with http.delete(f"{api}/jobs/{job_id}/") as response:
            answer = await response.json()
            assert response.status == 400 and "stop it first" in answer["message"]
        async with http.post(f"{api}/jobs/{job_id}/stop/") as response:
            assert response.status == 202
        for _ in range(600):
            statuses = await all_pages(http, f"{api}/jobs/{job_id}/statuses/")
            if statuses[-1]["status"] == "Completed":
                break
            await asyncio.sleep(0.05)
        assert "cancel" in statuses[-1]["statusReason"]
        async with http.delete(f"{api}/jobs/{job_id}/") as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("definition", "path"),
    [
        ({"name": "x", "jobanalyses": []}, "body.jobanalyses"),
        ({"jobanalyses": [{"command": "true"}, {"command": "true"}]}, "body.jobanalyses"),
        (
            {"jobanalyses": [{"command": "true", "hardware": {"cores": 2}}]},
            "body.jobanalyses[0].hardware.cores",
        ),
        ({"jobanalyses": [{"command": "true"}], "priority": 3}, "body.priority"),
        (
            {"jobanalyses": [{"command": "true", "inputFiles": [{"id": "nope"}]}]},
            "body.config.input_files[0].id",
        ),
    ],
    ids=["no-analysis", "two-analyses", "unknown-hardware-field", "unknown-field", "bad-input"],
)
async def test_a_bad_job_definition_is_refused_naming_the_field(
    running: Running, fleet: Any, definition: dict[str, Any], path: str
) -> None:
    async with (
        aiohttp.ClientSession(headers=TOKEN) as http,
        http.post(f"{running.url}/api/v2/jobs/", json=definition) as response,
    ):
        answer = await response.json()
        assert response.status == 400, answer
    assert answer["error"]["details"]["path"] == path


async def test_an_unknown_query_parameter_is_refused(running: Running) -> None:
    async with (
        aiohttp.ClientSession(headers=TOKEN) as http,
        http.get(f"{running.url}/api/v2/files/?state=completed") as response,
    ):
        answer = await response.json()
        assert response.status == 400 and answer["error"]["details"]["path"] == "query.state"
