"""The web dashboard (issue 4): its routes over HTTP, then every page in Debian's headless Chromium
against a real server on 127.0.0.1 with the demo fleet (3 clusters, 44 nodes × 8 = 352 GPUs).

Screenshots of each page go to ``test-artifacts/screenshots/`` (not committed).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from apportion.server import dashboard
from apportion.server.dashboard import OneTimeTokens, issue_one_time_link
from apportion.server.events import EventLog
from apportion.store.db import Database
from tests import builders as b
from tests.conftest import ADMIN_KEY, Running, running_server, server_settings
from tests.dashboard_helpers import (
    PHONE,
    chromium,
    free_port,
    new_page,
    require_browser,
    screenshot,
    sign_in,
    wait_live,
)
from tests.jobs_helpers import PY, gated, sleeper, submit, wait_for

DEMO_GPUS = 352  # 16 + 16 + 12 nodes × 8 GPUs
STATEFUL_POLICY = Path(__file__).parent / "policies" / "stateful" / "code" / "function.py"


def talker(lines: int, pause: float, gate: Path) -> list[str]:
    """A job that waits until the test creates ``gate`` (at most 60 s), then prints ``lines``
    numbered lines, ``pause`` seconds apart."""
    wait = (
        f"import os, time\nend = time.monotonic() + 60\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < end:\n"
        "    time.sleep(0.02)\n"
    )
    talk = f"for i in range({lines}):\n    print('line', i, flush=True)\n    time.sleep({pause})"
    code = wait + talk
    return [PY, "-c", code]


async def create_key(running: Running, scope: str) -> str:
    async with running.http.post(
        f"{running.url}/keys", json={"name": f"{scope} tester", "scope": scope}
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["data"]["api_key"])


@pytest.fixture
async def demo(tmp_path: Path) -> Any:
    async with running_server(tmp_path / "data") as live:
        await live.load_demo_fleet()
        yield live


# ---------------------------------------------------------------- routes, without a browser
async def test_page_and_files_are_public_and_data_needs_a_key(demo: Running) -> None:
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{demo.url}/") as response:
            assert response.status == 200
            assert "<title>Apportion</title>" in await response.text()
        async with anonymous.get(f"{demo.url}/static/app.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/javascript")
        async with anonymous.get(f"{demo.url}/static/vendor/socket.io.min.js") as response:
            assert response.status == 200
        outside = yarl.URL(f"{demo.url}/static/..%2fdashboard.py", encoded=True)
        async with anonymous.get(outside) as response:
            assert response.status == 404  # no way out of the static folder
        for path in ("/fleet", "/auth/whoami", "/dashboard/jobs"):
            async with anonymous.get(f"{demo.url}{path}") as response:
                assert response.status == 401, path
    async with demo.http.get(f"{demo.url}/auth/whoami") as response:
        assert await response.json() == {
            "key_id": (await response.json())["key_id"],
            "name": "admin (given at start)",
            "scope": "admin",
            "account": "default",
            "user": "admin (given at start)",
            "auth_enabled": True,
        }


async def test_missing_vendor_files_answer_a_500_page_saying_what_to_run(
    demo: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<title>Apportion</title>")
    monkeypatch.setattr(dashboard, "STATIC_DIR", static)
    async with demo.http.get(f"{demo.url}/") as response:
        text = await response.text()
        assert response.status == 500
    assert "make demo" in text and "copy-vendor.mjs" in text and "socket.io.min.js" in text


async def test_fleet_states_follow_holds_jobs_metrics_and_staleness(demo: Running) -> None:
    # hold 2 A100 GPUs, run a 1-GPU job, mark 3 GPUs of dgx-east-n00 busy by metrics
    body = {
        "adhoc": False,
        "policy_rule_uri": "binpack:1.0-stable",
        "inputs": {"gpus": 2, "gpu_model": "A100"},
    }
    async with demo.http.post(f"{demo.url}/allocate", json=body) as response:
        held = await response.json()
        assert response.status == 200, held
    job_id = await submit(
        demo, {"command": sleeper(30), "resources": {"gpus": 1, "gpu_model": "L40S"}}
    )
    await wait_for(demo, job_id, "running")
    utils = [80, 50, 49.9, 0, 0, 0, 0, 0]  # ≥ 50 is busy: 80 and 50 are, 49.9 is not
    metrics = {
        "nodes": [
            {
                "id": "dgx-east-n00",
                "gpus": [
                    {"gpu_id": i, "cudaUtilization": u, "freeMem": 1000}
                    for i, u in enumerate(utils)
                ],
            }
        ]
    }
    async with demo.http.put(f"{demo.url}/clusters/dgx-east/metrics", json=metrics) as response:
        assert response.status == 200, await response.text()
    async with demo.http.get(f"{demo.url}/fleet") as response:
        fleet = await response.json()
    assert fleet["gpu_fields"] == [
        "index",
        "model",
        "memory_mb",
        "state",
        "util",
        "free_mb",
        "holder",
    ]
    # 352 = 2 held + 1 job + 2 busy + 347 free; nothing is stale
    assert fleet["totals"] == {"gpus": 352, "free": 347, "held": 2, "job": 1, "busy": 2, "stale": 0}
    cells = {
        (c["id"], n["id"], g[0]): g
        for c in fleet["clusters"]
        for n in c["nodes"]
        for g in n["gpus"]
    }
    assert len(cells) == DEMO_GPUS
    node = held["data"]["node_id"]
    for gpu in held["data"]["gpus"]:
        assert cells[("a100-west", node, int(gpu))][3:] == [
            "held",
            None,
            None,
            held["allocation_id"],
        ]
    (job_cell,) = [g for g in cells.values() if g[3] == "job"]
    assert job_cell[1] == "L40S" and job_cell[6] == job_id
    assert cells[("dgx-east", "dgx-east-n00", 0)][3:6] == ["busy", 80.0, 1000.0]
    assert cells[("dgx-east", "dgx-east-n00", 2)][3:5] == ["free", 49.9]
    async with demo.http.post(f"{demo.url}/jobs/{job_id}/cancel") as response:
        assert response.status == 200


async def test_stale_metrics_colour_every_unheld_gpu_of_the_cluster(tmp_path: Path) -> None:
    # a TTL long enough that the first read is surely fresh, short enough to wait out
    async with running_server(tmp_path / "data", metrics_ttl=2.0) as live:
        await live.load_demo_fleet()
        async with live.http.put(
            f"{live.url}/clusters/mixed-lab/metrics", json={"nodes": []}
        ) as response:
            assert response.status == 200
        async with live.http.get(f"{live.url}/fleet") as response:
            fresh = await response.json()
        deadline = time.monotonic() + 30
        while True:  # until the TTL has passed: poll for the state, never assume a duration
            await asyncio.sleep(0.1)
            async with live.http.get(f"{live.url}/fleet") as response:
                stale = await response.json()
            lab = {c["id"]: c for c in stale["clusters"]}["mixed-lab"]
            if lab["metrics_stale"] or time.monotonic() > deadline:
                break
    lab = {c["id"]: c for c in fresh["clusters"]}["mixed-lab"]
    assert lab["metrics_stale"] is False and lab["counts"]["stale"] == 0
    lab = {c["id"]: c for c in stale["clusters"]}["mixed-lab"]
    # mixed-lab has 12 nodes × 8 GPUs = 96, all stale; the 256 others have no metrics: free
    assert lab["metrics_stale"] is True and lab["counts"]["stale"] == 96
    assert stale["totals"]["stale"] == 96 and stale["totals"]["free"] == 256


async def test_one_time_tokens_work_once_and_expire() -> None:
    now = [1000.0]
    tokens = OneTimeTokens(ttl_seconds=600, clock=lambda: now[0])
    first, second = tokens.issue(), tokens.issue()
    assert first != second and len(first) >= 40
    assert tokens.consume(first) is True
    assert tokens.consume(first) is False  # single use
    now[0] += 600.0  # expires at issue + 600: gone at exactly that time
    assert tokens.consume(second) is False
    assert tokens.consume("") is False
    link = issue_one_time_link("http://127.0.0.1:8080/", tokens)
    assert link.startswith("http://127.0.0.1:8080/#login=")
    assert tokens.consume(link.split("#login=")[1]) is True


async def test_one_time_exchange_gives_an_admin_session_key(demo: Running) -> None:
    token = issue_one_time_link(demo.url).split("#login=")[1]
    async with aiohttp.ClientSession() as anonymous:
        url = f"{demo.url}/auth/one-time"
        async with anonymous.post(url, json={"token": token}) as response:
            issued = await response.json()
            assert response.status == 201, issued
        async with anonymous.post(url, json={"token": token}) as response:
            refused = await response.json()
            assert response.status == 401
        headers = {"Authorization": f"Bearer {issued['api_key']}"}
        async with anonymous.get(f"{demo.url}/auth/whoami", headers=headers) as response:
            who = await response.json()
    assert issued["scope"] == "admin" and issued["name"] == "dashboard session"
    assert who["key_id"] == issued["key_id"] and who["scope"] == "admin"
    assert "already used or has expired" in refused["message"]


async def test_dashboard_jobs_keeps_unfinished_and_the_newest_finished(demo: Running) -> None:
    done = [await submit(demo, {"name": f"done-{i}", "command": sleeper(0)}) for i in range(3)]
    for job_id in done:
        await wait_for(demo, job_id, "completed")
    async with demo.http.post(
        f"{demo.url}/queues", json={"name": "later", "clusters": ["not-registered-yet"]}
    ) as response:
        assert response.status == 201  # its jobs wait: none of its clusters is registered
    waiting = await submit(demo, {"name": "waits", "queue": "later", "command": sleeper(0)})
    async with demo.http.get(f"{demo.url}/dashboard/jobs?finished=2") as response:
        names = [j["name"] for j in (await response.json())["jobs"]]
    # 3 finished, keep the newest 2, plus the 1 that waits: oldest first
    assert names == ["done-1", "done-2", "waits"]
    async with demo.http.get(f"{demo.url}/dashboard/jobs?finished=x") as response:
        assert response.status == 400
    async with demo.http.post(f"{demo.url}/jobs/{waiting}/cancel") as response:
        assert response.status == 200


# ---------------------------------------------------------------- in the browser
@pytest.fixture
async def browser() -> Any:
    require_browser()
    async with chromium() as launched:
        yield launched


async def test_sign_in_with_a_key_and_see_the_fleet(demo: Running, browser: Any) -> None:
    page, errors = await new_page(browser)
    await page.goto(demo.url + "/")
    await page.wait_for_selector("#page-signin:not([hidden])")
    await page.fill("#key-input", "apn_wrong_key")
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_selector("#signin-message.error")
    await sign_in(page, demo.url, ADMIN_KEY)
    await page.wait_for_function(
        f"document.querySelectorAll('#fleet-grid .gpu').length === {DEMO_GPUS}"
    )
    assert await page.locator('#fleet-legend [data-count="free"]').inner_text() == str(DEMO_GPUS)
    assert await page.evaluate("sessionStorage.getItem('apportion.apiKey')") == ADMIN_KEY
    title = await page.locator('[data-node="dgx-east-n03"] .gpu').nth(5).get_attribute("title")
    assert (
        title is not None
        and "dgx-east / dgx-east-n03 / GPU 5" in title
        and "H100, 81920 MB" in title
    )
    await screenshot(page, "fleet")
    # filters: one cluster, one model, one label; 16 A100 nodes × 8 = 128
    await page.select_option("#fleet-cluster", "a100-west")
    assert await page.locator("#fleet-grid .gpu").count() == 128
    await page.select_option("#fleet-cluster", "")
    await page.select_option("#fleet-model", "V100")
    assert await page.locator("#fleet-grid .gpu").count() == 48  # 6 odd mixed-lab nodes × 8
    await page.select_option("#fleet-model", "")
    await page.fill("#fleet-label", "rack=r1")
    assert await page.locator("#fleet-grid .gpu").count() == 96  # nodes 0-3 of 3 clusters × 8
    await page.goto(demo.url + "/#utilisation")
    await page.wait_for_selector("#util-chart canvas")
    assert int(await page.get_attribute("#util-chart", "data-samples") or 0) >= 1
    await screenshot(page, "utilisation")
    phone, phone_errors = await new_page(browser, PHONE)
    await sign_in(phone, demo.url, ADMIN_KEY)
    await phone.wait_for_selector("#fleet-grid .gpu")
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # no sideways scrolling at phone width
    await screenshot(phone, "fleet-phone")
    assert errors.errors == [] and phone_errors.errors == []


async def test_sign_in_with_the_one_time_link(demo: Running, browser: Any) -> None:
    link = issue_one_time_link(demo.url)
    page, errors = await new_page(browser)
    await page.goto(link)
    await page.wait_for_selector("#nav:not([hidden])")
    await wait_live(page)
    assert "login=" not in page.url
    assert await page.locator("#whoami").inner_text() == "dashboard session (admin)"
    assert (await page.evaluate("sessionStorage.getItem('apportion.apiKey')")).startswith("apn_")
    again, _ = await new_page(browser)  # a second browser with the same link is refused
    await again.goto(link)
    await again.wait_for_selector("#signin-message.error")
    assert "already used" in await again.locator("#signin-message").inner_text()
    assert errors.errors == []


async def test_a_job_appears_runs_and_completes_live_and_its_detail_shows_logs(
    demo: Running, browser: Any, job_tmp: Path
) -> None:
    gate = job_tmp / "talk-now"  # the job runs until the page has shown it running
    page, errors = await new_page(browser)
    await sign_in(page, demo.url, ADMIN_KEY)
    await page.goto(demo.url + "/#jobs")
    await page.evaluate("window.__sameDocument = 42")
    job_id = await submit(
        demo,
        {
            "name": "talker",
            "command": talker(5, 0.4, gate),
            "resources": {"gpus": 2, "gpu_model": "A100"},
        },
    )
    row = f'#jobs-table tr[data-job="{job_id}"]'
    await page.wait_for_selector(row)
    await page.wait_for_selector(f'{row}[data-status="running"]')
    await screenshot(page, "jobs")
    gate.touch()
    await page.wait_for_selector(f'{row}[data-status="completed"]')
    assert await page.evaluate("window.__sameDocument") == 42  # never reloaded
    await page.click(f"{row} a")
    await page.wait_for_selector('#job-timeline li[data-status="completed"]')
    record = await wait_for(demo, job_id, "completed")
    placement = record["allocation"][0]
    allocation = await page.locator("#job-allocation tbody tr").inner_text()
    assert placement["cluster_id"] in allocation and placement["node_id"] in allocation
    assert "0, 1" in allocation
    assert (
        await page.locator('#job-fields [data-field="scheduler job id"]').inner_text()
        == record["scheduler_job_id"]
    )
    await page.wait_for_function(
        "document.querySelector('#job-logs').textContent.includes('line 4')"
    )
    assert (await page.locator("#job-logs").inner_text()).split() == [
        w for i in range(5) for w in ("line", str(i))
    ]
    assert "16 feasible" in await page.locator("#job-decision").inner_text()
    await page.wait_for_selector("#job-cancel", state="hidden")  # a finished job has no cancel
    await screenshot(page, "job-detail")
    assert errors.errors == []


async def test_cancel_a_queued_job_from_the_page(demo: Running, browser: Any) -> None:
    async with demo.http.put(f"{demo.url}/pool/limits", json={"max_concurrent_jobs": 1}) as r:
        assert r.status == 200
    # the blocker holds the only slot until the test cancels it (300 s: never on its own)
    blocker = await submit(demo, {"name": "blocker", "command": sleeper(300)})
    await wait_for(demo, blocker, "running")
    queued = await submit(demo, {"name": "waiter", "command": sleeper(0)})
    page, errors = await new_page(browser)
    await sign_in(page, demo.url, ADMIN_KEY)
    await page.goto(demo.url + "/#jobs")
    await page.wait_for_selector(f'tr[data-job="{queued}"] td.reason:has-text("PoolLimit")')
    await page.goto(f"{demo.url}/#job={queued}")
    await page.wait_for_selector("#job-cancel:not([hidden])")
    await page.click("#job-cancel")
    await page.wait_for_selector('#job-status:has-text("cancelled")')
    assert (await wait_for(demo, queued, "cancelled"))["status"] == "cancelled"
    async with demo.http.post(f"{demo.url}/jobs/{blocker}/cancel") as response:
        assert response.status == 200
    assert errors.errors == []


async def test_the_queue_table_shows_quota_use(demo: Running, browser: Any, job_tmp: Path) -> None:
    quota = {"gpus": {"H100": {"nominal": 2}}}
    for name in ("lab-a", "lab-b"):
        body = {"name": name, "cohort": "lab", "quota": quota}
        async with demo.http.post(f"{demo.url}/queues", json=body) as response:
            assert response.status == 201
    gate = job_tmp / "may-end"
    borrower = await submit(
        demo, {"queue": "lab-a", "command": gated(gate), "resources": {"gpus": 3}}
    )
    await wait_for(demo, borrower, "running")
    page, errors = await new_page(browser)
    await sign_in(page, demo.url, ADMIN_KEY)
    await page.goto(demo.url + "/#jobs")
    row = page.locator('#queues-table tr[data-queue="lab-a"]')
    await row.locator("td.quota:has-text('H100 3 / 2 (1 borrowed) · cohort lab')").wait_for()
    assert await row.locator("td").nth(4).inner_text() == "3"  # GPUs held
    assert "H100 0 / 2" in await page.locator('#queues-table tr[data-queue="lab-b"]').inner_text()
    gate.touch()
    await wait_for(demo, borrower, "completed")
    assert errors.errors == []


async def test_a_waiting_job_shows_its_estimated_start(
    demo: Running, browser: Any, job_tmp: Path
) -> None:
    small = b.cluster("small", [b.node("s0", gpus=2)])
    async with demo.http.post(f"{demo.url}/clusters", json=small) as response:
        assert response.status in (200, 201)
    async with demo.http.post(
        f"{demo.url}/queues", json={"name": "on-small", "clusters": ["small"]}
    ) as response:
        assert response.status == 201
    gate = job_tmp / "may-end"
    config = {"queue": "on-small", "resources": {"gpus": 2}, "walltime": 600}
    holder = await submit(demo, {**config, "command": gated(gate)})
    await wait_for(demo, holder, "running")
    waiting = await submit(demo, {**config, "command": sleeper(0)})
    page, errors = await new_page(browser)
    await sign_in(page, demo.url, ADMIN_KEY)
    await page.goto(f"{demo.url}/#job={waiting}")
    shown = page.locator('#job-fields dd[data-field="estimated start"]')
    await shown.wait_for()
    assert await shown.inner_text() != ""
    async with demo.http.post(f"{demo.url}/jobs/{waiting}/cancel") as response:
        assert response.status == 200
    gate.touch()
    await wait_for(demo, holder, "completed")
    assert errors.errors == []


async def test_a_read_key_sees_no_buttons_that_would_fail(demo: Running, browser: Any) -> None:
    reader = await create_key(demo, "read")
    page, errors = await new_page(browser)
    await sign_in(page, demo.url, reader)
    assert await page.locator("#whoami").inner_text() == "read tester (read)"
    await page.goto(demo.url + "/#playground")
    await page.wait_for_selector("#pg-send")
    assert await page.locator("#pg-hold").is_hidden()
    await page.goto(demo.url + "/#policies")
    await page.wait_for_selector('details.policy[data-uri="binpack:1.0-stable"]')
    assert await page.locator("#policy-admin").is_hidden()
    job_id = await submit(demo, {"command": sleeper(30), "resources": {"gpus": 1}})
    await page.goto(f"{demo.url}/#job={job_id}")
    # the admin's job, in the reader's account: shown, but a read key cannot cancel it
    await page.wait_for_selector("#job-status")
    assert "default" in await page.locator("#job-fields").inner_text()  # its account
    assert await page.locator("#job-cancel").is_hidden()
    assert errors.errors == []
    async with demo.http.post(f"{demo.url}/jobs/{job_id}/cancel") as response:
        assert response.status == 200


async def test_playground_shows_rejected_nodes_and_holds_and_releases(
    demo: Running, browser: Any
) -> None:
    page, errors = await new_page(browser)
    await sign_in(page, demo.url, ADMIN_KEY)
    await page.goto(demo.url + "/#playground")
    await page.wait_for_selector('#pg-policy option[value="binpack:1.0-stable"]', state="attached")
    await page.fill("#pg-inputs", '{"gpus": 2, "gpu_model": "A100"}')
    await page.click("#pg-send")
    await page.wait_for_selector("table.rejected")
    # 44 nodes − 16 A100 nodes = 28 rejected, each for its model
    rows = page.locator("table.rejected tbody tr")
    assert await rows.count() == 28
    assert "no GPU of model A100; node has H100" in await rows.first.inner_text()
    assert "a100-west-n00" in await page.locator("#pg-placement").inner_text()
    await screenshot(page, "playground")
    await page.fill("#pg-inputs", '{"gpus": 9}')
    await page.click("#pg-send")
    await page.wait_for_selector("#pg-error")
    assert "NoFeasiblePlacement" in await page.locator("#pg-message").inner_text()
    assert await page.locator("table.rejected tbody tr").count() == 44
    await page.fill("#pg-inputs", "{not json")
    await page.click("#pg-send")
    await page.wait_for_selector('#pg-message:has-text("Inputs is not valid JSON")')
    await page.fill("#pg-inputs", '{"gpus": 1}')
    await page.click("#pg-hold")
    await page.wait_for_selector("#pg-holds tr[data-allocation]")
    async with demo.http.get(f"{demo.url}/allocations") as response:
        (hold,) = (await response.json())["data"]
    await page.click(f'button[data-release="{hold["allocation_id"]}"]')
    await page.wait_for_selector("#pg-holds tr[data-allocation]", state="detached")
    async with demo.http.get(f"{demo.url}/allocations") as response:
        assert (await response.json())["data"] == []
    assert errors.errors == []


async def test_policies_page_uploads_and_runs_a_management_action(
    demo: Running, browser: Any, tmp_path: Path
) -> None:
    code = tmp_path / "function.py"
    code.write_bytes(STATEFUL_POLICY.read_bytes())
    page, errors = await new_page(browser)
    await sign_in(page, demo.url, ADMIN_KEY)
    await page.goto(demo.url + "/#policies")
    await page.wait_for_selector('details.policy[data-uri="spread:1.0-stable"]')
    record = {"name": "stateful", "version": "2.0", "release_tag": "beta"}
    await page.fill("#policy-record", json.dumps(record))
    await page.set_input_files("#policy-code", str(code))
    await page.click("#policy-upload button[type=submit]")
    await page.wait_for_selector('#policy-upload-message.ok:has-text("stateful:2.0-beta")')
    await page.wait_for_selector('details.policy[data-uri="stateful:2.0-beta"]')
    await page.select_option("#policy-manage-uri", "stateful:2.0-beta")
    await page.fill("#policy-manage-action", "update_thresholds")
    await page.fill("#policy-manage-data", '{"threshold": 7}')
    await page.click("#policy-manage button[type=submit]")
    await page.wait_for_selector("#policy-manage-result.ok")
    assert json.loads(await page.locator("#policy-manage-result").inner_text())["data"] == {
        "status": "success",
        "threshold": 7,
    }
    await screenshot(page, "policies")
    assert errors.errors == []


async def test_events_resync_after_a_server_restart_without_a_gap(
    tmp_path: Path, browser: Any
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    page, errors = await new_page(browser)
    async with running_server(data_dir, port=port) as first:
        await first.load_demo_fleet()  # events 1-3: cluster_updated × 3
        await sign_in(page, first.url, ADMIN_KEY)
        await page.goto(first.url + "/#events")
        async with first.http.put(f"{first.url}/pool/limits", json={"max_concurrent_jobs": 5}):
            pass
        await page.wait_for_selector('#events-table tr[data-type="limits_updated"]')
    await page.wait_for_selector('#conn:not([data-state="live"])')
    # while the page is disconnected, events are written to the store (as another process would)
    db = await Database.open(server_settings(data_dir).database_url)
    log = EventLog(db)
    missed = [
        await log.append("cluster_updated", {"cluster_id": f"offline-{i}", "change": "test"})
        for i in range(3)
    ]
    await log.close()
    await db.close()
    async with running_server(data_dir, port=port) as second:
        await wait_live(page)
        async with second.http.put(f"{second.url}/pool/limits", json={"max_concurrent_jobs": 6}):
            pass
        async with second.http.get(f"{second.url}/events") as response:
            stored = [e["seq"] for e in (await response.json())["data"]]
        await page.wait_for_selector(f'#events-table tr[data-seq="{stored[-1]}"]')
        seen = await page.eval_on_selector_all(
            "#events-table tbody tr", "rows => rows.map(r => Number(r.dataset.seq))"
        )
        await screenshot(page, "events")
    # every stored event once, newest first: 3 clusters, 1 limit, 3 missed, 1 limit = 8
    assert stored == list(range(1, 9))
    assert seen == sorted(stored, reverse=True)
    assert {e["seq"] for e in missed} <= set(seen)
    assert errors.errors == []
