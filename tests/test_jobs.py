"""Jobs through the REST API, run by the real local adapter (CONTRACTS §6; seeds 000, 001)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from apportion.clients import AsyncApportion
from apportion.jobs import service as service_module
from tests.conftest import ADMIN_KEY, Running, running_server
from tests.jobs_helpers import (
    PY,
    create_queue,
    exiting,
    gated,
    job,
    sleeper,
    statuses,
    submit,
    until_reason,
    wait_for,
)


async def test_a_job_runs_to_completion_with_its_gpus(running: Running, fleet: Any) -> None:
    command = [
        PY,
        "-c",
        "import os, json; print(json.dumps({k: os.environ.get(k) for k in "
        "('CUDA_VISIBLE_DEVICES', 'APPORTION_JOB_ID', 'APPORTION_WORKER_INDEX', "
        "'APPORTION_NUM_WORKERS')}))",
    ]
    job_id = await submit(
        running, {"name": "env", "command": command, "resources": {"gpus": 2, "gpu_model": "A100"}}
    )
    record = await wait_for(running, job_id, "completed", "failed")
    assert record["status"] == "completed" and record["return_code"] == 0
    assert record["allocation"] == [
        {"cluster_id": "a100-west", "node_id": "a100-west-n00", "gpus": ["0", "1"]}
    ]
    assert record["scheduler_job_id"]
    # the decision record: 16 A100 nodes are feasible, the 28 others lack the model
    decision = record["decision"]
    assert decision["policy_rule_uri"] == "binpack:1.0-stable"
    assert decision["feasible_nodes"] == 16 and decision["candidate_nodes"] == 44
    assert decision["rejection_summary"] == {"gpu_model": 28}
    assert await statuses(running, job_id) == ["queued", "scheduled", "running", "completed"]
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as response:
        env = json.loads((await response.text()).strip().splitlines()[-1])
    assert env == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "APPORTION_JOB_ID": job_id,
        "APPORTION_WORKER_INDEX": "0",
        "APPORTION_NUM_WORKERS": "1",
    }
    # its GPUs were given back
    async with running.http.get(f"{running.url}/allocations") as response:
        assert (await response.json())["data"] == []


async def test_a_failing_command_is_failed_with_its_return_code(
    running: Running, fleet: Any
) -> None:
    job_id = await submit(running, {"command": exiting(3)})
    record = await wait_for(running, job_id, "completed", "failed")
    assert record["status"] == "failed" and record["return_code"] == 3
    assert "3" in record["failed_reason"]


async def test_priority_first_then_fifo(running: Running, fleet: Any, job_tmp: Path) -> None:
    async with running.http.put(f"{running.url}/pool/limits", json={"max_concurrent_jobs": 1}) as r:
        assert r.status == 200
    gate = job_tmp / "blocker-may-end"  # the blocker runs until all four jobs wait behind it
    blocker = await submit(running, {"name": "blocker", "command": gated(gate)})
    await wait_for(running, blocker, "running")
    low_a = await submit(running, {"name": "low-a", "command": sleeper(0)}, priority=0)
    high = await submit(running, {"name": "high", "command": sleeper(0)}, priority=5)
    low_b = await submit(running, {"name": "low-b", "command": sleeper(0)}, priority=0)
    negative = await submit(running, {"name": "negative", "command": sleeper(0)}, priority=-1)
    await until_reason(running, low_a, "PoolLimit")  # set by the next admission cycle
    waiting = await job(running, low_a)
    assert (
        waiting["reason"]["code"] == "PoolLimit"
        and "max_concurrent_jobs is 1" in waiting["reason"]["message"]
    )
    assert (await job(running, high))["queue_position"] == 1
    gate.touch()
    finished = [await wait_for(running, j, "completed") for j in (high, low_a, low_b, negative)]
    starts = [f["start_time"] for f in finished]
    assert starts == sorted(starts), finished


async def test_seed_000_worker_cap_all_or_nothing(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    await create_queue(running, name="capped", maximum_allowed_worker_instances=10)
    gate = job_tmp / "ten-may-end"  # the 10 workers run until the 8-worker job was refused
    ten = await submit(running, {"queue": "capped", "command": gated(gate), "replica_count": 10})
    await wait_for(running, ten, "running")
    eight = await submit(running, {"queue": "capped", "command": sleeper(0), "replica_count": 8})
    record = await wait_for(running, eight, "queued")
    await until_reason(running, eight, "QueueWorkerCap")
    record = await job(running, eight)
    assert "needs 8 worker instance(s), queue 'capped' has 0 free" in record["reason"]["message"]
    gate.touch()
    assert (await wait_for(running, ten, "completed"))["status"] == "completed"
    assert (await wait_for(running, eight, "completed"))["status"] == "completed"


async def test_a_job_that_does_not_fit_lets_a_smaller_one_pass(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    await create_queue(running, name="q", maximum_allowed_worker_instances=10)
    gate = job_tmp / "seven-may-end"  # the 7 workers hold their slots until the test looked
    seven = await submit(running, {"queue": "q", "command": gated(gate), "replica_count": 7})
    await wait_for(running, seven, "running")
    four = await submit(running, {"queue": "q", "command": sleeper(0), "replica_count": 4})
    three = await submit(running, {"queue": "q", "command": sleeper(0), "replica_count": 3})
    # 3 free: the 4-worker job waits, the 3-worker job behind it starts (and ends)
    await wait_for(running, three, "completed")
    # the reason is refreshed every cycle ("0 free" while the 3 workers ran): wait for the
    # cycle after their end, when 3 are free again and the 4-worker job still cannot start
    await until_reason(
        running, four, "QueueWorkerCap", "needs 4 worker instance(s), queue 'q' has 3 free"
    )
    record = await job(running, four)
    assert record["status"] == "queued"
    gate.touch()
    await wait_for(running, four, "completed")


async def test_starvation_is_bounded_by_max_bypass(
    running: Running, fleet: Any, job_tmp: Path
) -> None:
    # cap 4, a 3-worker job runs; a 2-worker job waits; 1-worker jobs may pass it only twice
    await create_queue(running, name="fair", maximum_allowed_worker_instances=4, max_bypass=2)
    gate = job_tmp / "big-may-end"  # the 3-worker job runs until the third small job waits
    big = await submit(running, {"queue": "fair", "command": gated(gate), "replica_count": 3})
    await wait_for(running, big, "running")
    pair = await submit(running, {"queue": "fair", "command": sleeper(0), "replica_count": 2})
    smalls = [
        await submit(running, {"queue": "fair", "command": sleeper(0.6), "replica_count": 1})
        for _ in range(4)
    ]
    await wait_for(running, smalls[0], "running", "completed")
    await wait_for(running, smalls[1], "running", "completed")
    await until_reason(running, smalls[2], "WaitsBehindStarvingJob")
    blocked = await job(running, smalls[2])
    assert pair in blocked["reason"]["message"]
    gate.touch()
    pair_done = await wait_for(running, pair, "completed")
    later = await wait_for(running, smalls[2], "completed")
    assert pair_done["start_time"] <= later["start_time"]


async def test_cancel_queued_and_running(running: Running, fleet: Any, job_tmp: Path) -> None:
    long = await submit(running, {"command": sleeper(60)})
    await wait_for(running, long, "running")
    async with running.http.post(f"{running.url}/jobs/{long}/cancel") as r:
        assert r.status == 200 and await r.json() == {"success": True}
    record = await wait_for(running, long, "cancelled")
    assert record["end_time"] is not None
    async with running.http.put(f"{running.url}/pool/limits", json={"max_concurrent_jobs": 1}) as r:
        assert r.status == 200
    gate = job_tmp / "first-may-end"  # the first job holds the only slot until second is gone
    first = await submit(running, {"command": gated(gate)})
    second = await submit(running, {"command": sleeper(1)})
    async with running.http.post(f"{running.url}/jobs/{second}/cancel") as r:
        assert r.status == 200
    assert (await wait_for(running, second, "cancelled"))["start_time"] is None
    gate.touch()
    await wait_for(running, first, "completed")


async def test_seed_001_errors(running: Running, fleet: Any) -> None:
    url = running.url
    for path in ("/jobs/nope/cancel", "/jobs/nope/priority"):
        async with running.http.post(url + path, json={"priority": 1}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "NotFound"
    for bad in (0, 101, -1, "x", 2.5):
        async with running.http.put(f"{url}/pool/limits", json={"max_concurrent_jobs": bad}) as r:
            body = await r.json()
            assert (
                r.status == 400 and body["error"]["details"]["path"] == "body.max_concurrent_jobs"
            )
    done = await submit(running, {"command": sleeper(0)})
    await wait_for(running, done, "completed")
    async with running.http.post(f"{url}/jobs/{done}/priority", json={"priority": 9}) as r:
        assert r.status == 409
    # a finished job is never re-run by a priority change (the seed's defect)
    assert await statuses(running, done) == ["queued", "scheduled", "running", "completed"]
    async with running.http.post(f"{url}/jobs/submit", json={"config": {"command": "ls -la"}}) as r:
        assert (
            r.status == 400
            and (await r.json())["error"]["details"]["path"] == "body.config.command"
        )
    async with running.http.post(
        f"{url}/jobs/submit", json={"config": {"command": ["true"], "queue": "ghost"}}
    ) as r:
        assert (
            r.status == 400 and (await r.json())["error"]["details"]["path"] == "body.config.queue"
        )
    async with running.http.delete(f"{url}/jobs/{done}") as r:
        assert r.status == 202 and (await r.json())["deleted"] is True
    async with running.http.get(f"{url}/jobs/{done}") as r:
        assert r.status == 404


STUBBORN = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(300)"
)


async def test_a_job_deleted_while_it_still_stops_goes_when_it_has_ended(
    running: Running, fleet: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DELETE waits this long for the job to end; this one takes 1.5 s after SIGTERM, and its
    # adapter's cancel returns once it sent SIGTERM, as SGE's qdel returns before the job stopped
    monkeypatch.setattr(service_module, "DELETE_WAIT_SECONDS", 0.2)
    local = running.server.context.jobs.driver.adapters["local"]  # type: ignore[union-attr]
    monkeypatch.setattr(local, "_wait_ended", lambda spec, seconds: True)
    job_id = await submit(
        running, {"command": [PY, "-u", "-c", STUBBORN], "resources": {"gpus": 1}}
    )
    await wait_for(running, job_id, "running")
    for _ in range(200):  # its SIGTERM handler is set once it printed
        async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as r:
            if "ready" in await r.text():
                break
        await asyncio.sleep(0.05)
    async with running.http.delete(f"{running.url}/jobs/{job_id}") as r:
        answer = await r.json()
    assert r.status == 202 and answer["deleted"] is False
    assert "still stopping" in answer["message"]
    # its record stays while it stops: its process and its GPUs are still accounted for
    async with running.http.get(f"{running.url}/jobs/{job_id}") as r:
        assert r.status == 200
    async with running.http.get(f"{running.url}/allocations") as r:
        assert [h["request_id"] for h in (await r.json())["data"]] == [job_id]
    for _ in range(200):  # then it ended, and went with its hold
        async with running.http.get(f"{running.url}/jobs/{job_id}") as r:
            if r.status == 404:
                break
        await asyncio.sleep(0.05)
    assert r.status == 404
    async with running.http.get(f"{running.url}/allocations") as r:
        assert (await r.json())["data"] == []


async def test_queue_statistics(running: Running, fleet: Any, job_tmp: Path) -> None:
    async with running.http.put(f"{running.url}/pool/limits", json={"max_concurrent_jobs": 1}) as r:
        assert r.status == 200
    gate = job_tmp / "first-may-end"  # runs until the statistics were read
    first = await submit(running, {"command": gated(gate)})
    try:
        await wait_for(running, first, "running")
        await submit(running, {"command": sleeper(0)}, priority=3)
        async with running.http.get(f"{running.url}/queue") as r:
            stats = await r.json()
        assert stats["total_queued"] == 1 and stats["running_jobs"] == 1
        assert stats["priorities"] == {"3": 1}
        assert stats["queues"]["default"]["queued"] == 1
    finally:
        gate.touch()  # the job ends (and with it its process) whatever was asserted
        await wait_for(running, first, "completed")


async def test_a_jobs_usage_is_seed_002s_document_and_survives_a_restart(tmp_path: Path) -> None:
    usage_keys = {
        "cpuSeconds",
        "memoryCpuSeconds",
        "instantTotalMemory",
        "maxTotalMemory",
        "processIO",
        "processIOWaiting",
        "timeInstant",
    }
    async with running_server(tmp_path / "data") as live:
        await live.load_demo_fleet()
        job_id = await submit(live, {"command": sleeper(0)})
        usage = (await wait_for(live, job_id, "completed"))["resource_usage"]
    assert set(usage) == usage_keys, usage
    assert isinstance(usage["cpuSeconds"], float) and usage["cpuSeconds"] >= 0
    async with running_server(tmp_path / "data") as live:
        assert (await job(live, job_id))["resource_usage"] == usage


async def test_a_job_that_cannot_start_never_ran_and_has_no_start_time(
    running: Running, fleet: Any
) -> None:
    # before: "running" at the poll that saw it fail, with a start_time after its end_time
    job_id = await submit(running, {"command": ["/nonexistent/program"]})
    record = await wait_for(running, job_id, "completed", "failed")
    assert record["status"] == "failed" and "could not start" in record["failed_reason"]
    assert record["start_time"] is None and record["end_time"] is not None
    assert await statuses(running, job_id) == ["queued", "scheduled", "failed"]
    ran = await submit(running, {"command": exiting(3)})
    record = await wait_for(running, ran, "completed", "failed")
    assert record["start_time"] is not None and record["start_time"] <= record["end_time"]
    assert await statuses(running, ran) == ["queued", "scheduled", "running", "failed"]


async def test_a_page_of_jobs_says_how_many_there_are_and_where_the_next_page_is(
    running: Running,
) -> None:
    # before, GET /jobs answered the oldest 100 with no hint that there were more
    ids = [await submit(running, {"command": sleeper(0)}) for _ in range(5)]  # queued: no fleet
    async with running.http.get(f"{running.url}/jobs", params={"limit": "2"}) as r:
        first = [j["job_id"] for j in await r.json()]
        assert r.headers["X-Total-Count"] == "5"
        link = r.headers["Link"]
    assert first == ids[:2] and link.endswith('>; rel="next"') and "offset=2" in link
    async with running.http.get(link[1 : link.index(">")]) as r:
        assert [j["job_id"] for j in await r.json()] == ids[2:4]
    async with running.http.get(f"{running.url}/jobs", params={"offset": "4"}) as r:
        assert [j["job_id"] for j in await r.json()] == ids[4:]
        assert "Link" not in r.headers  # the last page


OUTPUT = "".join(f"{i:04d}\n" for i in range(100))  # 500 bytes: line i at byte 5 i


@pytest.mark.parametrize(
    ("asked", "status", "content_range", "body"),
    [
        (None, 200, None, OUTPUT),
        ("bytes=0-9", 206, "bytes 0-9/500", OUTPUT[:10]),
        ("bytes=495-", 206, "bytes 495-499/500", OUTPUT[495:]),
        ("bytes=-10", 206, "bytes 490-499/500", OUTPUT[-10:]),
        ("bytes=-1000", 206, "bytes 0-499/500", OUTPUT),
        ("bytes=500-", 206, None, ""),  # the end, as a client following the output asks
    ],
    ids=["whole", "first-ten", "from-495", "last-ten", "suffix-past-the-start", "at-the-end"],
)
async def test_a_jobs_output_is_served_by_byte_ranges(
    running: Running,
    fleet: Any,
    asked: str | None,
    status: int,
    content_range: str | None,
    body: str,
) -> None:
    job_id = await submit(running, {"command": [PY, "-c", f"print({OUTPUT[:-1]!r})"]})
    await wait_for(running, job_id, "completed")
    headers = {} if asked is None else {"Range": asked}
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs", headers=headers) as response:
        assert response.status == status
        assert response.headers.get("Content-Range") == content_range
        assert response.headers["Accept-Ranges"] == "bytes"
        assert await response.text() == body


async def test_a_bad_or_unsatisfiable_log_range_is_refused(running: Running, fleet: Any) -> None:
    job_id = await submit(running, {"command": [PY, "-c", "print('x' * 9)"]})  # 10 bytes
    await wait_for(running, job_id, "completed")
    url = f"{running.url}/jobs/{job_id}/logs"
    async with running.http.get(url, headers={"Range": "bytes=11-"}) as response:
        answer = await response.json()
        assert response.status == 416 and answer["error"]["details"]["size"] == 10
    for bad in ("bytes=5-2", "items=0-1", "bytes=0-1,3-4", "bytes=-", "bytes=x-"):
        async with running.http.get(url, headers={"Range": bad}) as response:
            answer = await response.json()
            assert response.status == 400, bad
            assert answer["error"]["details"]["path"] == "Range"


async def test_jobs_are_found_by_label_and_by_parent(running: Running, fleet: Any) -> None:
    parent = await submit(running, {"command": exiting(0), "labels": {"team": "vision"}})
    child = await submit(
        running,
        {"command": exiting(0), "labels": {"team": "vision", "step": "2"}, "parent_job_id": parent},
    )
    other = await submit(running, {"command": exiting(0), "labels": {"team": "nlp"}})

    async def ids(query: str) -> list[str]:
        async with running.http.get(f"{running.url}/jobs?{query}") as response:
            assert response.status == 200, await response.text()
            return [j["job_id"] for j in await response.json()]

    assert await ids("label=team=vision") == [parent, child]
    assert await ids("label=team=vision&label=step=2") == [child]  # every label must match
    assert await ids("label=team=nlp") == [other]
    assert await ids(f"parent_job_id={parent}") == [child]
    async with AsyncApportion(running.url, api_key=ADMIN_KEY) as client:
        found = await client.list_jobs(labels={"team": "vision", "step": "2"})
        assert [j.job_id for j in found] == [child]
        assert [j.job_id for j in await client.list_jobs(parent_job_id=parent)] == [child]
    async with running.http.get(f"{running.url}/jobs?label=novalue") as response:
        answer = await response.json()
        assert response.status == 400 and answer["error"]["details"]["path"] == "query.label"
    orphan = {"config": {"command": exiting(0), "parent_job_id": "0" * 32}}
    async with running.http.post(f"{running.url}/jobs/submit", json=orphan) as response:
        answer = await response.json()
        assert response.status == 400
        assert answer["error"]["details"]["path"] == "body.config.parent_job_id"
