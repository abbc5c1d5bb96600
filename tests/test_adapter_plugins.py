"""Scheduler adapters as plugins (issue 12, item 3): the entry points of the group
``apportion.adapters`` — Apportion's own ``local`` and ``slurm``, and any package's — are the
server's adapters; ``GET /plugins`` lists each with what became of it; a queue's ``plugin``
must name one the server runs. The third-party package here is a real one written into a
temporary directory on ``sys.path`` (a ``.dist-info`` with its ``entry_points.txt``, as pip
installs it): its adapter runs real processes (it is the local adapter under another name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import builders as b
from tests.conftest import running_server
from tests.jobs_helpers import PY, create_queue, submit, wait_for

PLUGIN = """
from apportion.adapters.local.adapter import LocalAdapter


class TeamAdapter(LocalAdapter):
    name = "team"


def create():
    return TeamAdapter()


def unavailable():
    return None
"""

ENTRY_POINTS = """[apportion.adapters]
team = team_adapter:create
broken = team_adapter:missing
absent = team_adapter:unavailable
misnamed = team_adapter:create
"""


def install_plugin(site: Path) -> None:
    """``apportion-team-adapter`` as pip would leave it in ``site``."""
    (site / "team_adapter.py").write_text(PLUGIN)
    info = site / "apportion_team_adapter-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: apportion-team-adapter\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


async def test_a_third_party_adapter_is_found_listed_and_runs_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    async with running_server(tmp_path / "data") as live:
        async with live.http.get(f"{live.url}/plugins") as response:
            plugins = {p["name"]: p for p in await response.json()}
        assert plugins["local"]["builtin"] and plugins["local"]["available"]
        assert "slurm" in plugins  # available where sbatch is
        team = plugins["team"]
        assert (team["distribution"], team["builtin"], team["available"]) == (
            "apportion-team-adapter",
            False,
            True,
        )
        assert (team["module_name"], team["class_name"]) == ("team_adapter", "create")
        assert not plugins["broken"]["available"] and "AttributeError" in plugins["broken"]["error"]
        assert not plugins["absent"]["available"] and plugins["absent"]["error"] is None
        assert "is named 'team', not 'misnamed'" in plugins["misnamed"]["error"]

        doc = b.cluster(
            "team-cluster", [b.node("t0", gpus=2)], config={"scheduler": {"type": "team"}}
        )
        async with live.http.post(f"{live.url}/clusters", json=doc) as response:
            assert response.status in (200, 201)
        await create_queue(live, name="team-q", plugin="team")
        job_id = await submit(live, {"queue": "team-q", "command": [PY, "-c", "print('via team')"]})
        done = await wait_for(live, job_id, "completed", "failed")
        assert done["status"] == "completed" and done["adapter"] == "team"
        async with live.http.get(f"{live.url}/jobs/{job_id}/logs") as response:
            assert (await response.text()).strip() == "via team"


@pytest.mark.parametrize("plugin", ["broken", "pbs"])
async def test_a_queue_naming_an_adapter_the_server_does_not_run_is_refused(
    tmp_path: Path, plugin: str
) -> None:
    async with running_server(tmp_path / "data") as live:
        body: dict[str, Any] = {"name": "q", "plugin": plugin}
        async with live.http.post(f"{live.url}/queues", json=body) as response:
            answer = await response.json()
            assert response.status == 400, answer
        assert answer["error"]["details"]["path"] == "body.plugin"
        assert "GET /plugins" in answer["message"] and "local" in answer["message"]
