"""`apportion demo` — the README's first command — starts, answers, and runs demo jobs to completion."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import psutil  # type: ignore[import-untyped, unused-ignore]

from apportion.server.credentials import read_profile

REPO = Path(__file__).resolve().parent.parent


async def test_demo_prints_its_urls_and_runs_jobs(tmp_path: Path) -> None:
    apportion = Path(sys.executable).parent / "apportion"
    process = await asyncio.create_subprocess_exec(
        str(apportion),
        "demo",
        "--port",
        "0",
        "--ws-port",
        "0",
        "--duration",
        "30",
        "--data-dir",
        str(tmp_path / "demo"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while not any(line.strip().startswith("answer") for line in lines):
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            assert line, f"demo ended early: {lines}"
            lines.append(line)
        text = "".join(lines)
        assert "3 clusters, 44 nodes, 352 GPUs" in text
        url = re.search(r"REST API\s+(http://\S+)", text)
        key = re.search(r"admin key\s+(\S+)", text)
        assert url and key and "ws://127.0.0.1:" in text
        assert re.search(r"dashboard\s+http://127\.0\.0\.1:\d+/#login=\S+", text)
        answer = json.loads(text.split("answer", 1)[1].strip().splitlines()[0])
        assert answer["success"] is True and answer["data"]["cluster_id"] == "dgx-east"
        # the key is saved as the profile "demo": one export survives every restart of the demo
        assert "export APPORTION_PROFILE=demo" in text
        profile = read_profile("demo", tmp_path / ".config" / "apportion" / "credentials")
        assert profile is not None and (profile.url, profile.api_key) == (
            url.group(1),
            key.group(1),
        )
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        completed: list[dict[str, object]] = []
        async with aiohttp.ClientSession(headers=headers) as http:
            for _ in range(600):  # 60 s at least: a generous deadline for a demo job
                async with http.get(f"{url.group(1)}/jobs", params={"status": "completed"}) as r:
                    completed = await r.json()
                if completed:
                    break
                await asyncio.sleep(0.1)
        assert completed, "no demo job completed"
        assert completed[0]["queue"] in ("training", "inference")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0  # SIGTERM stops it cleanly
    # its jobs were cancelled before it stopped, and a stopping server waits for an executor
    # with nothing to run to exit: nothing of the demo runs on
    jobs_dir = str(tmp_path / "demo" / "jobs")
    left = [p for p in psutil.process_iter(["cmdline"]) if jobs_dir in (p.info["cmdline"] or [])]
    assert not left, f"the demo left {left} running"
