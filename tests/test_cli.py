"""Every ``apportion`` client command against a real server on 127.0.0.1:0.

The CLI runs in a thread against a server in the test's event loop (tests/cli_helpers.py);
``events --follow``, ``logs -f`` and the Ctrl-C tests run a real subprocess of the console
script. ``serve``
and ``demo`` are driven by tests/test_demo.py and tests/test_serve_config.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from apportion import __version__
from apportion.cli.app import app
from apportion.cli.common import parse_duration
from apportion.errors import InvalidRequest, NotFound
from apportion.jobs.identity import python_for_jobs
from apportion.jobs.records import Job, resolve_job
from tests.cli_helpers import as_json, cli, cli_env, ok, runner
from tests.conftest import ADMIN_KEY, Running
from tests.jobs_helpers import job, record, wait_for
from tests.sandbox_env import jailed  # noqa: F401 (a fixture)

PY = python_for_jobs()  # an interpreter the job user can run (docs/security.md)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_version_and_config_show(running: Running, tmp_path: Path) -> None:
    assert ok(await cli(running, "version")).strip() == __version__
    shown = as_json(await cli(running, "config", "show", "-o", "json", tmp=tmp_path))
    assert (shown["url"], shown["ws_url"]) == (running.url, running.ws_url)
    assert shown["sources"] == {
        "url": "environment",
        "ws_url": "environment",
        "api_key": "environment",
    }
    assert ADMIN_KEY not in json.dumps(shown)  # the key is redacted
    flagged = as_json(await cli(running, "--url", "http://h:1", "config", "show", "-o", "json"))
    assert (flagged["url"], flagged["sources"]["url"]) == ("http://h:1", "argument")
    table = ok(await cli(running, "config", "show"))
    assert running.url in table and "environment" in table


async def test_allocate_from_flags_and_file(
    running: Running, fleet: list[dict[str, Any]], tmp_path: Path
) -> None:
    nodes = {c["id"]: {n["id"] for n in c["nodes"]["nodeData"]} for c in fleet}
    answer = as_json(await cli(running, "allocate", "--gpus", "2", "-o", "json"))
    placement = answer["placements"][0]
    assert placement["node_id"] in nodes[placement["cluster_id"]] and len(placement["gpus"]) == 2
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps(
            {
                "policy_rule_uri": "spread:1.0-stable",
                "clusters": [fleet[1]["id"]],
                "inputs": {"gpus": 3},
                "explain": True,
            }
        )
    )
    from_file = as_json(await cli(running, "allocate", "--file", str(request), "-o", "json"))
    assert from_file["placements"][0]["cluster_id"] == fleet[1]["id"]
    assert len(from_file["placements"][0]["gpus"]) == 3
    assert from_file["explain"]["policy_rule_uri"] == "spread:1.0-stable"
    table = ok(await cli(running, "allocate", "--gpus", "1"))
    assert "CLUSTER" in table and "NODE" in table
    refused = await cli(running, "allocate", "--gpus", "1000")
    assert refused.exit_code == 1 and "[NoFeasiblePlacement]" in refused.stderr


async def test_clusters_nodes_export_load(
    running: Running, fleet: list[dict[str, Any]], tmp_path: Path
) -> None:
    listed = ok(await cli(running, "clusters", "list"))
    assert all(c["id"] in listed for c in fleet)
    assert {c["id"] for c in as_json(await cli(running, "clusters", "list", "-o", "json"))} == {
        c["id"] for c in fleet
    }
    shown = as_json(await cli(running, "clusters", "show", fleet[0]["id"]))
    assert shown["id"] == fleet[0]["id"]
    missing = await cli(running, "clusters", "show", "nowhere")
    assert missing.exit_code == 1 and "nowhere" in missing.stderr and "[NotFound]" in missing.stderr
    rows = as_json(await cli(running, "nodes", "-o", "json"))
    assert len(rows) == sum(len(c["nodes"]["nodeData"]) for c in fleet)
    assert {r["state"] for r in rows} == {"idle"} and all(r["free"] == r["gpus"] for r in rows)
    # states as sinfo names them: a node with some GPUs held is mix, with all of them alloc
    (first,) = [r for r in rows if r["node_id"] == fleet[0]["nodes"]["nodeData"][0]["id"]]
    ok(await cli(running, "hold", "--gpus", "2", "--cluster", fleet[0]["id"]))
    ok(await cli(running, "hold", "--gpus", str(first["gpus"]), "--cluster", fleet[0]["id"]))
    states = {r["state"] for r in as_json(await cli(running, "nodes", "-o", "json"))}
    assert states == {"idle", "mix", "alloc"}
    one = as_json(await cli(running, "nodes", "--cluster", fleet[0]["id"], "-o", "json"))
    assert {r["cluster_id"] for r in one} == {fleet[0]["id"]}
    snapshot = tmp_path / "snap.json"
    ok(await cli(running, "clusters", "export", "--file", str(snapshot)))
    saved = json.loads(snapshot.read_text())
    assert [c["id"] for c in saved["clusters"]] == sorted(c["id"] for c in fleet)
    new = tmp_path / "new.json"
    new.write_text(json.dumps({**fleet[0], "id": "copied", "clusterMetadata": {"name": "copy"}}))
    loaded = ok(await cli(running, "clusters", "load", str(new)))
    assert "Registered cluster copied" in loaded
    again = ok(await cli(running, "clusters", "load", str(new)))  # replaces, no conflict
    assert "Registered cluster copied" in again
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert (await cli(running, "clusters", "load", str(bad))).exit_code == 2


async def test_short_ids_in_the_table_and_any_unique_prefix_names_a_job(
    running: Running,
) -> None:
    # before, the table printed 32 hex characters (cut at 80 columns) and no prefix worked
    ids = [
        (await cli(running, "submit", "--", PY, "-c", "pass")).stdout.split()[-1] for _ in range(3)
    ]  # queued: no fleet to run on
    table = ok(await cli(running, "jobs"))
    for job_id in ids:
        assert job_id[:12] in table and job_id not in table
    target = ids[0]
    unique = next(  # the shortest prefix (4 at least) that no other job shares
        target[:n] for n in range(4, 33) if not any(o.startswith(target[:n]) for o in ids[1:])
    )
    status = as_json(await cli(running, "status", unique, "-o", "json"))
    assert status["job_id"] == target
    assert "Cancelled" in ok(await cli(running, "cancel", target[:12]))
    async with running.http.get(f"{running.url}/jobs/{target[:12]}") as response:
        assert (await response.json())["status"] == "cancelled"
    too_short = await cli(running, "status", target[:3])
    assert too_short.exit_code == 1 and "[NotFound]" in too_short.stderr


def test_a_prefix_several_jobs_share_is_refused_naming_how_many() -> None:
    jobs = {}
    for seq, job_id in enumerate(("abcd1111", "abcd2222", "ffff0000"), start=1):
        job = record(seq)
        job.job_id = job_id
        jobs[job_id] = job

    def everyone(job: Job) -> bool:
        return True

    def not_bobs(job: Job) -> bool:
        return job.job_id != "abcd2222"

    assert resolve_job(jobs, "abcd1", visible=everyone).job_id == "abcd1111"
    with pytest.raises(InvalidRequest, match="matches 2 jobs"):
        resolve_job(jobs, "abcd", visible=everyone)
    # a job the asker may not see is never matched: no oracle through prefixes
    assert resolve_job(jobs, "abcd", visible=not_bobs).job_id == "abcd1111"
    with pytest.raises(NotFound):
        resolve_job(jobs, "abcd2222", visible=not_bobs)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1:30", 90.0),  # MM:SS
        ("1:00:00", 3600.0),  # HH:MM:SS, as Slurm users type it
        ("2-12", 216000.0),  # D-HH
        ("2-12:30", 217800.0),  # D-HH:MM
        ("1-00:00:01", 86401.0),
    ],
)
def test_walltime_takes_what_sbatch_users_type(given: str, seconds: float) -> None:
    assert parse_duration(given, flag="--walltime") == seconds


@pytest.mark.parametrize("given", ["", "1m30", "1:xx", "1:60", "5x", "0", "nan", "1:2:3:4"])
def test_a_walltime_that_is_no_duration_is_a_usage_error_naming_the_flag(given: str) -> None:
    # before, --walltime 1m was a usage error and 1:00:00 could not be typed at all
    result = runner.invoke(app, ["submit", "--walltime", given, "--", "true"])
    assert result.exit_code == 2, result.output
    assert "--walltime" in result.stderr and "1:00:00" in result.stderr


def test_a_profile_named_but_missing_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\nurl = http://127.0.0.1:1\n")
    env = {"APPORTION_CREDENTIALS": str(credentials)}
    for args, named in ((["--profile", "nosuch"], "nosuch"), ([], None)):
        result = runner.invoke(app, [*args, "config", "show", "-o", "json"], env=env)
        if named is None:
            assert result.exit_code == 0, result.output  # no name given: the default profile
            continue
        assert result.exit_code == 2, result.output
        assert "'nosuch' is not in the credentials file" in result.stderr
        assert "its profiles: default" in result.stderr
    by_env = runner.invoke(app, ["config", "show"], env=env | {"APPORTION_PROFILE": "other"})
    assert by_env.exit_code == 2 and "'other'" in by_env.stderr


def test_version_and_short_help() -> None:
    assert runner.invoke(app, ["--version"]).stdout.strip() == __version__
    short = runner.invoke(app, ["-h"])
    assert short.exit_code == 0 and "Usage: apportion" in short.stdout
    submit_help = runner.invoke(app, ["submit", "-h"])
    assert submit_help.exit_code == 0
    # an on/off flag takes no value: typer's rich help showed `--wait / --no-wait <bool>`
    assert "--wait / --no-wait" in submit_help.stdout and "<bool>" not in submit_help.stdout
    for group in ("policies", "keys", "accounts", "config", "clusters"):
        group_help = runner.invoke(app, [group, "-h"])
        assert group_help.exit_code == 0 and "<bool>" not in group_help.stdout, group


async def test_submit_wait_says_why_it_waits_and_streams_the_output(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # before, --wait showed no reason while the job waited and no output once it ran
    async with running.http.post(
        f"{running.url}/queues", json={"name": "later", "clusters": ["not-registered-yet"]}
    ) as response:
        assert response.status == 201  # its job is accepted and waits: no cluster to place on
    waiting = asyncio.create_task(
        cli(running, "submit", "--wait", "--queue", "later", "--", "true")
    )
    job_id = None
    for _ in range(600):  # until the job is recorded as waiting, 30 s at most
        async with running.http.get(f"{running.url}/jobs") as response:
            queued = [j for j in await response.json() if j["reason"] and j["reason"]["code"]]
        if queued and queued[0]["reason"]["code"] == "NoFeasiblePlacement":
            job_id = queued[0]["job_id"]
            break
        await asyncio.sleep(0.05)
    assert job_id is not None
    async with running.http.post(f"{running.url}/jobs/{job_id}/cancel") as response:
        assert response.status == 200
    result = await waiting
    assert f"{job_id}: queued (waiting: " in result.stdout
    assert f"{job_id}: cancelled" in result.stdout and result.exit_code == 1
    ran = await cli(
        running, "submit", "--wait", "--", PY, "-c", "print('line one'); print('line two')"
    )
    assert ran.exit_code == 0, ran.output
    lines = ran.stdout.splitlines()
    assert lines.index("line one") < lines.index("line two")
    assert lines[-1].endswith(": completed (exit code 0)")


def ctrl_c_as_in_a_terminal() -> None:
    """In the child, before exec: SIGINT as a terminal's foreground command has it. A shell
    without job control starts a background command (`.ci/run &`) with SIGINT ignored, and
    every process of the tests would inherit that: the CLI would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_on_submit_wait_cancels_the_job_and_says_so(
    running: Running, fleet: list[dict[str, Any]], tmp_path: Path
) -> None:
    # before, Ctrl-C left the job running without a word
    script = Path(sys.executable).parent / "apportion"
    process = await asyncio.create_subprocess_exec(
        str(script),
        "submit",
        "--wait",
        "--",
        PY,
        "-c",
        "import time; print('started', flush=True); time.sleep(300)",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **cli_env(running, ADMIN_KEY, tmp_path)},
        preexec_fn=ctrl_c_as_in_a_terminal,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        job_id = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()[-1]
        for _ in range(20):  # until the job's output is streamed: it runs
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            if line.strip() == b"started":
                break
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 130
        said = (await process.stderr.read()).decode()
        assert f"cancelled job {job_id}" in said
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    record = await wait_for(running, job_id, "cancelled", "completed", "failed")
    assert record["status"] == "cancelled"


async def test_chdir_runs_the_job_there_and_a_refusal_names_the_flag(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    # before, the CLI had no --chdir: `submit -- python train.py` ran in the job's own dir
    async with running.http.post(
        f"{running.url}/queues", json={"name": "shared", "working_dir": str(job_tmp)}
    ) as response:
        assert response.status == 201
    code = "import os; print(os.getcwd())"
    ran = await cli(
        running, "submit", "--wait", "--queue", "shared", "-D", str(job_tmp), "--", PY, "-c", code
    )
    assert ran.exit_code == 0, ran.output
    assert str(job_tmp) in ran.stdout.splitlines()
    refused = await cli(running, "submit", "--chdir", "/", "--", PY, "-c", code)
    assert refused.exit_code == 1
    assert refused.stderr.startswith("apportion: --chdir: config.working_dir / is not")
    assert "body." not in refused.stderr  # the flag, not the REST field
    bad_env = await cli(running, "submit", "--env", "LD_PRELOAD=x", "--", PY, "-c", code)
    assert bad_env.exit_code == 1 and bad_env.stderr.startswith("apportion: --env: ")


async def test_the_jobs_table_shows_user_time_and_gpus_and_queues_say_unlimited(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # before: no USER, TIME or GPUS column, and -1 for a queue without a worker cap
    alice = as_json(await cli(running, "keys", "create", "alice", "-o", "json"))["api_key"]
    done = await cli(
        running, "submit", "--wait", "--gpus", "2", "--workers", "2", "--", "true", key=alice
    )
    job_id = done.stdout.split()[2]
    table = ok(await cli(running, "jobs", "--all", key=alice))
    header, *rows = table.splitlines()
    assert header.split()[:9] == ["JOBID", "NAME", "USER", "QUEUE", "STATE", "START", "TIME",
                                  "WORKERS", "GPUS"]  # fmt: skip
    (row,) = [r for r in rows if r.startswith(job_id[:12])]
    cells = row.split()
    assert cells[2] == "alice" and cells[4] == "completed"  # the key's user
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", cells[5])  # when it started
    assert re.fullmatch(r"\d+:\d\d", cells[6]) and cells[7:9] == ["2", "4"]  # 2 workers × 2
    queues = ok(await cli(running, "queues"))
    assert "unlimited" in queues and " -1 " not in queues


def test_python_dash_m_apportion_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apportion", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == __version__


async def test_hold_allocations_and_release_as_salloc_does(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # before, holding GPUs took the Python client or a raw WebSocket message
    held = as_json(await cli(running, "hold", "--gpus", "2", "--lease", "10m", "-o", "json"))
    allocation_id = held["allocation_id"]
    assert len(held["placements"][0]["gpus"]) == 2
    assert held["expires_at"] - time.time() > 500  # a lease of ten minutes, not the default
    table = ok(await cli(running, "hold", "--gpus", "1"))
    assert table.startswith("Holding allocation ") and "CLUSTER" in table
    second = table.split()[2]
    listed = ok(await cli(running, "allocations"))
    assert allocation_id in listed and second in listed
    assert f"Released allocation {allocation_id}" in ok(
        await cli(running, "release", allocation_id, second)
    )
    assert as_json(await cli(running, "allocations", "-o", "json")) == []
    gone = await cli(running, "release", allocation_id)
    assert gone.exit_code == 1 and "[UnknownAllocation]" in gone.stderr
    bad = await cli(running, "hold", "--lease", "soon")
    assert bad.exit_code == 2 and "--lease" in bad.stderr


async def test_a_failing_jobs_traceback_is_in_its_logs(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # before, logs showed stdout only: a failing Python job's traceback was invisible
    code = "print('working', flush=True); raise RuntimeError('the traceback you need')"
    out = (await cli(running, "submit", "--wait", "--", PY, "-c", code)).stdout
    job_id = out.splitlines()[0].split()[-1]
    logs = ok(await cli(running, "logs", job_id))
    assert "working" in logs and "RuntimeError: the traceback you need" in logs
    assert logs.index("working") < logs.index("Traceback")  # in the order written


async def test_submit_wait_status_logs_and_listing(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    waited = await cli(
        running,
        "submit",
        "--wait",
        "--name",
        "hi",
        "--env",
        "WHO=cli",
        "--gpus",
        "1",
        "--",
        PY,
        "-c",
        "import os; print('hello', os.environ['WHO'])",
    )
    out = ok(waited)
    job_id = out.splitlines()[0].split()[-1]
    assert f"{job_id}: queued" in out and f"{job_id}: completed" in out
    assert "hello cli" in ok(await cli(running, "logs", job_id))
    assert "hello cli" in ok(await cli(running, "logs", "-f", job_id))
    status = as_json(await cli(running, "status", job_id, "-o", "json"))
    assert (status["status"], status["name"]) == ("completed", "hi")
    assert [s["status"] for s in status["statuses"]][-1] == "completed"
    assert "completed" in ok(await cli(running, "status", job_id))
    failed = await cli(running, "submit", "--wait", "--", PY, "-c", "raise SystemExit(3)")
    # the job's own exit code, as srun gives it (before: 1 for every failure)
    assert failed.exit_code == 3 and ": failed (exit code 3)" in failed.stdout
    parsable = ok(
        await cli(running, "submit", "--parsable", "--", PY, "-c", "import time; time.sleep(300)")
    )
    sleeper = parsable.strip()
    assert len(parsable.splitlines()) == 1 and len(sleeper) >= 8
    active = ok(await cli(running, "jobs"))
    assert sleeper[:12] in active and "REASON" in active  # the table's short ids
    assert job_id[:12] not in active  # finished: hidden
    everything = as_json(await cli(running, "jobs", "--all", "-o", "json"))
    assert {job_id, sleeper} <= {j["job_id"] for j in everything}
    completed = as_json(await cli(running, "jobs", "--state", "completed", "-o", "json"))
    assert {j["status"] for j in completed} == {"completed"}
    assert (await cli(running, "jobs", "--output", "xml")).exit_code == 2
    assert ok(await cli(running, "cancel", sleeper)).strip() == f"Cancelled job {sleeper}"
    unknown = await cli(running, "status", "no-such-job")
    assert unknown.exit_code == 1 and "no-such-job" in unknown.stderr
    partly = await cli(running, "cancel", "no-such-job")
    assert partly.exit_code == 1 and "[NotFound]" in partly.stderr


async def test_allocate_explain_prints_a_summary_and_json_has_the_record(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # before, --explain printed some 250 lines of raw JSON under the table
    text = ok(await cli(running, "allocate", "--gpus", "2", "--gpu-model", "A100", "--explain"))
    lines = text.splitlines()
    assert len(lines) < 20, text
    assert "Decided by binpack:1.0-stable over 3 cluster(s)" in text
    assert "16 of 44 candidate nodes could take it" in text  # 44 nodes, 16 of them A100
    assert "refused because of gpu_model: 28" in text and "… and 25 more (-o json for all)" in text
    assert "best:" in text and "time:" in text
    record = as_json(await cli(running, "allocate", "--gpus", "2", "--gpu-model", "A100",
                               "--explain", "-o", "json"))["explain"]  # fmt: skip
    assert len(record["rejected"]) == 28


async def test_history_as_sacct_with_since_user_state_and_format(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # before, there was no history view: `jobs --all` only, with no filters
    bob = as_json(await cli(running, "keys", "create", "bob", "-o", "json"))["api_key"]
    ok(await cli(running, "submit", "--wait", "--", PY, "-c", "pass"))
    failed = await cli(running, "submit", "--wait", "--", PY, "-c", "raise SystemExit(4)", key=bob)
    bobs = failed.stdout.split()[2]
    rows = as_json(await cli(running, "history", "--user", "bob", "-o", "json"))
    assert [r["job_id"] for r in rows] == [bobs]
    table = ok(
        await cli(running, "history", "--state", "failed", "--format", "jobid,user,exitcode")
    )
    assert table.splitlines()[0].split() == ["JOBID", "USER", "EXITCODE"]
    assert any(line.split() == [bobs, "bob", "4"] for line in table.splitlines())
    assert len(as_json(await cli(running, "history", "--since", "1h", "-o", "json"))) == 2
    assert as_json(await cli(running, "history", "--since", "2999-01-01", "-o", "json")) == []
    bad = await cli(running, "history", "--format", "jobid,colour")
    assert bad.exit_code == 2 and "colour" in bad.stderr and "exitcode" in bad.stderr


async def test_jobs_watch_redraws_until_interrupted(running: Running, tmp_path: Path) -> None:
    # before, there was no --watch: `watch apportion jobs` paid the CLI's start every time
    script = Path(sys.executable).parent / "apportion"
    process = await asyncio.create_subprocess_exec(
        str(script), "jobs", "--watch",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **cli_env(running, ADMIN_KEY, tmp_path)},
        preexec_fn=ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        headers = 0
        while headers < 2:  # two redraws, each with the table's header
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, "jobs --watch ended by itself"
            headers += b"JOBID" in line
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) in (0, 130)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_logs_follow_of_a_gang_shows_every_worker_live(
    running: Running, fleet: list[dict[str, Any]], tmp_path: Path, job_tmp: Path
) -> None:
    # before, `logs -f` of a gang showed worker 0 live and the others only once it had ended
    gate = job_tmp / "gate"
    code = (
        "import os, time\n"
        "print('worker', os.environ['APPORTION_WORKER_INDEX'], 'is live', flush=True)\n"
        f"end = time.monotonic() + 120\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < end:\n"
        "    time.sleep(0.05)\n"
    )
    job_id = (await cli(running, "submit", "--workers", "2", "--", PY, "-c", code)).stdout.split()[
        -1
    ]
    script = Path(sys.executable).parent / "apportion"
    process = await asyncio.create_subprocess_exec(
        str(script), "logs", "-f", job_id,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **cli_env(running, ADMIN_KEY, tmp_path)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        seen: set[str] = set()
        while len(seen) < 2:  # both workers' lines while both still run
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
            assert line, "logs -f ended before both workers were seen"
            seen.add(line)
        assert seen == {"[0] worker 0 is live", "[1] worker 1 is live"}
        assert (await job(running, job_id))["status"] == "running"  # still running, both
        gate.touch()
        assert await asyncio.wait_for(process.wait(), 30) == 0  # ends with the job
    finally:
        gate.touch()
        if process.returncode is None:
            process.kill()
            await process.wait()
    await wait_for(running, job_id, "completed", "failed")


async def test_cli_errors_speak_cli_not_rest(running: Running, tmp_path: Path) -> None:
    # before: "list jobs with GET /jobs", "send Authorization: Bearer <key>"
    unknown = await cli(running, "status", "ffffffffffff")
    assert unknown.exit_code == 1 and "`apportion jobs --all`" in unknown.stderr
    assert "GET /" not in unknown.stderr
    no_key = await cli(running, "jobs", key=None, tmp=tmp_path)
    assert no_key.exit_code == 1 and "--api-key" in no_key.stderr
    assert "Authorization: Bearer" not in no_key.stderr
    no_account = await cli(running, "keys", "create", "k", "--account", "nowhere")
    assert "`apportion accounts create`" in no_account.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"APPORTION_URL": f"http://127.0.0.1:{port}", "APPORTION_API_KEY": ADMIN_KEY}
    away = await asyncio.to_thread(
        runner.invoke, app, ["jobs"], env=env | {"APPORTION_CREDENTIALS": str(tmp_path / "x")}
    )
    assert away.exit_code == 1 and "check --url" in away.stderr


async def test_submit_a_toml_job_file_and_a_script_with_directives(
    running: Running, fleet: list[dict[str, Any]], job_tmp: Path
) -> None:
    # before, every job was flags on the command line; sbatch users keep #SBATCH lines
    spec = job_tmp / "job.toml"
    spec.write_text(
        'name = "from-file"\nworkers = 2\ngpus = 1\nwalltime = "10m"\n'
        f'command = ["{PY}", "-c", "print(\'from a file\')"]\n'
        '[env]\nSTAGE = "test"\n'
    )
    ran = await cli(running, "submit", "--wait", str(spec))
    assert ran.exit_code == 0, ran.output
    job_id = ran.stdout.split()[2]
    shown = as_json(await cli(running, "status", job_id, "-o", "json"))
    config = shown["config"]
    assert (shown["name"], config["replica_count"], config["resources"]["gpus"]) == (
        "from-file",
        2,
        1,
    )
    assert config["walltime"] == 600 and config["env"] == {"STAGE": "test"}
    table = ok(await cli(running, "status", job_id))
    assert "gpus per worker" in table and "walltime" in table and "from a file" in table
    script = job_tmp / "train.sh"
    script.write_text(
        f"#!{PY}\n#APPORTION --gpus 2 --name scripted\n#APPORTION --walltime 1:00:00\n"
        "import sys\nprint('args', sys.argv[1:])\n"
    )
    script.chmod(0o755)
    flagged = await cli(running, "submit", "--wait", "--name", "flag-wins", str(script), "x")
    assert flagged.exit_code == 0, flagged.output
    assert "args ['x']" in flagged.stdout
    shown = as_json(await cli(running, "status", flagged.stdout.split()[2], "-o", "json"))
    assert shown["name"] == "flag-wins"  # a flag on the command line beats the file
    assert shown["config"]["resources"]["gpus"] == 2 and shown["config"]["walltime"] == 3600
    bad = job_tmp / "bad.toml"
    bad.write_text('command = ["true"]\ncolour = "red"\n')
    refused = await cli(running, "submit", str(bad))
    assert refused.exit_code == 2 and "unknown key 'colour'" in refused.stderr
    # a flag after a job file would become an argument of a program it is not: refused
    late = await cli(running, "submit", str(spec), "--wait")
    assert late.exit_code == 2, late.output
    assert "give flags before the job file" in late.stderr
    assert f"apportion submit --wait {spec}" in late.stderr


async def test_queues_and_explain_a_waiting_job(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    body = {"name": "solo", "maximum_allowed_worker_instances": 1}
    async with running.http.post(f"{running.url}/queues", json=body) as response:
        assert response.status == 201
    listed = as_json(await cli(running, "queues", "-o", "json"))
    assert "solo" in {q["name"] for q in listed}
    assert "solo" in ok(await cli(running, "queues"))
    sleep = [PY, "-c", "import time; time.sleep(300)"]  # cancelled below: never ends by itself
    first = ok(await cli(running, "submit", "--parsable", "--queue", "solo", "--", *sleep)).strip()
    second = ok(await cli(running, "submit", "--parsable", "--queue", "solo", "--", *sleep)).strip()
    for _ in range(200):  # the admission loop starts the first; the cap of 1 holds the second
        placed = as_json(await cli(running, "explain", first, "-o", "json"))
        if placed["allocation"]:
            break
        await asyncio.sleep(0.05)
    assert placed["waiting"] is False
    words = ok(await cli(running, "explain", first))
    assert "worker 0:" in words
    waiting = as_json(await cli(running, "explain", second, "-o", "json"))
    assert waiting["waiting"] is True and waiting["reason"]["code"]
    text = ok(await cli(running, "explain", second))
    assert "is waiting" in text and "queue position" in text
    both = ok(await cli(running, "cancel", first, second))
    assert both.count("Cancelled job") == 2


async def test_policies_list_push_manage(running: Running, tmp_path: Path) -> None:
    listed = as_json(await cli(running, "policies", "list", "-o", "json"))
    assert "binpack:1.0-stable" in {p["policy_rule_uri"] for p in listed}
    assert "topology:1.0-stable" in ok(await cli(running, "policies", "list"))
    folder = tmp_path / "least_loaded"
    shutil.copytree(EXAMPLES / "policies" / "least_loaded", folder)
    pushed = ok(await cli(running, "policies", "push", str(folder), "--version", "2.0"))
    assert pushed.strip() == "Uploaded least-loaded:2.0-example"
    twice = await cli(running, "policies", "push", str(folder), "--version", "2.0")
    assert twice.exit_code == 1 and "[Conflict]" in twice.stderr
    described = as_json(await cli(running, "policies", "manage", "binpack:1.0-stable", "describe"))
    assert described["name"] == "binpack"
    state = as_json(
        await cli(running, "policies", "manage", "least-loaded:2.0-example", "get_state")
    )
    assert state  # the example answers with its parameters


async def test_policies_test_offline(tmp_path: Path) -> None:
    from apportion.demo import demo_clusters

    snapshot = tmp_path / "snap.json"
    clusters = demo_clusters()
    snapshot.write_text(json.dumps({"clusters": clusters, "metrics": {}}))
    folder = EXAMPLES / "policies" / "least_loaded"
    inputs = '{"gpus": 2}'
    # no server: the offline runner needs none (no URL in the environment either)
    result = as_json(
        await cli(
            None,
            "policies",
            "test",
            str(folder),
            "--snapshot",
            str(snapshot),
            "--inputs",
            inputs,
            "--cluster",
            "mixed-lab",
            "-o",
            "json",
            key=None,
        )
    )
    assert result["policy_rule_uri"] == "least-loaded:1.0-example"
    assert result["data"]["cluster_id"] == "mixed-lab" and len(result["data"]["gpus"]) == 2
    builtin = ok(
        await cli(
            None,
            "policies",
            "test",
            "binpack:1.0-stable",
            "--snapshot",
            str(snapshot),
            "--inputs",
            inputs,
            key=None,
        )
    )
    assert "CLUSTER" in builtin and "Decision record" in builtin and "candidate_nodes" in builtin
    nothing = await cli(
        None,
        "policies",
        "test",
        "binpack:1.0-stable",
        "--snapshot",
        str(snapshot),
        "--inputs",
        '{"gpus": 1000}',
        key=None,
    )
    assert nothing.exit_code == 1 and "[NoFeasiblePlacement]" in nothing.stderr
    missing = await cli(
        None,
        "policies",
        "test",
        "binpack:1.0-stable",
        "--snapshot",
        str(tmp_path / "none.json"),
        "--inputs",
        inputs,
        key=None,
    )
    assert missing.exit_code == 2 and "clusters export" in missing.stderr


async def test_keys_create_list_revoke_and_bad_key(running: Running) -> None:
    created = as_json(
        await cli(running, "keys", "create", "ci-reader", "--scope", "read", "-o", "json")
    )
    assert created["scope"] == "read"
    listed = ok(await cli(running, "keys", "list"))
    assert created["key_id"] in listed and "ci-reader" in listed
    assert (
        as_json(await cli(running, "clusters", "list", "-o", "json", key=created["api_key"])) == []
    )
    denied = await cli(running, "submit", "--", PY, "-c", "pass", key=created["api_key"])
    assert denied.exit_code == 1 and "[Forbidden]" in denied.stderr
    assert (
        ok(await cli(running, "keys", "revoke", created["key_id"]))
        .strip()
        .endswith(created["key_id"])
    )
    revoked = await cli(running, "clusters", "list", key=created["api_key"])
    assert revoked.exit_code == 1 and "[Unauthorized]" in revoked.stderr
    wrong = await cli(running, "jobs", key="not-a-real-key-0123456789")
    assert wrong.exit_code == 1 and "unknown, revoked or mistyped" in wrong.stderr


async def test_accounts_create_and_list_and_a_key_of_an_account(running: Running) -> None:
    made = ok(await cli(running, "accounts", "create", "vision-lab", "--description", "GPUs"))
    assert made.strip() == "Created account vision-lab (its jobs run as the server's job_user)"
    listed = as_json(await cli(running, "accounts", "list", "-o", "json"))
    assert [(a["name"], a["description"]) for a in listed] == [
        ("default", "every key and job made before accounts existed"),
        ("vision-lab", "GPUs"),
    ]
    created = as_json(
        await cli(
            running, "keys", "create", "alice-laptop", "--account", "vision-lab", "--user",
            "alice", "-o", "json",
        )
    )  # fmt: skip
    assert (created["account"], created["user"], created["scope"]) == (
        "vision-lab",
        "alice",
        "submit",
    )
    table = ok(await cli(running, "keys", "list"))
    assert "ACCOUNT" in table and "vision-lab" in table
    unknown = await cli(running, "keys", "create", "bob", "--account", "nowhere")
    assert unknown.exit_code == 1 and "nowhere" in unknown.stderr
    twice = await cli(running, "accounts", "create", "vision-lab")
    assert twice.exit_code == 1 and "exists already" in twice.stderr
    denied = await cli(running, "accounts", "list", key=created["api_key"])
    assert denied.exit_code == 1 and "[Forbidden]" in denied.stderr


async def test_unreachable_server_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {
        "APPORTION_URL": url,
        "APPORTION_WS_URL": f"ws://127.0.0.1:{port}",
        "APPORTION_CREDENTIALS": str(tmp_path / "x"),
    }
    for args in (["jobs"], ["clusters", "list"]):
        result = await asyncio.to_thread(runner.invoke, app, args, env=env)
        assert result.exit_code == 1 and url in result.stderr and "cannot reach" in result.stderr


async def test_events_history_and_follow(
    running: Running, fleet: list[dict[str, Any]], tmp_path: Path
) -> None:
    lines = ok(await cli(running, "events", "--type", "cluster_updated", "-o", "json")).splitlines()
    assert [json.loads(line)["cluster_id"] for line in lines] == [c["id"] for c in fleet]
    assert "cluster_updated" in ok(await cli(running, "events"))
    script = Path(sys.executable).parent / "apportion"
    process = await asyncio.create_subprocess_exec(
        str(script),
        "events",
        "--follow",
        "--type",
        "cluster_updated",
        "--since",
        str(json.loads(lines[-1])["seq"]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **cli_env(running, ADMIN_KEY, tmp_path)},
    )
    try:
        for _ in range(600):  # wait until the follower is connected to Socket.IO (30 s at least)
            async with running.http.get(f"{running.url}/system/status") as response:
                if (await response.json())["socketio_clients"] >= 1:
                    break
            await asyncio.sleep(0.05)
        async with running.http.post(
            f"{running.url}/clusters", json={**fleet[0], "id": "live-one"}
        ) as response:
            assert response.status == 201
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert b"cluster_updated" in line and b"live-one" in line
    finally:
        process.terminate()
        await process.wait()


async def test_keys_revoke_needs_a_flag_for_the_calling_key(running: Running) -> None:
    whoami = await running.http.get(f"{running.url}/auth/whoami")
    own_id = (await whoami.json())["key_id"]
    whoami.release()
    refused = await cli(running, "keys", "revoke", own_id)
    assert refused.exit_code == 1 and "[Conflict]" in refused.stderr
    assert "--allow-self" in refused.stderr
    last = await cli(running, "keys", "revoke", own_id, "--allow-self")
    assert last.exit_code == 1 and "--allow-last-admin" in last.stderr
    ok(await cli(running, "keys", "revoke", own_id, "--allow-self", "--allow-last-admin"))


def _gone(pid: int) -> bool:
    """True when ``pid`` has exited (absent, or a zombie nobody has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


async def test_policies_test_exits_after_a_policy_timeout_and_kills_what_it_started(
    tmp_path: Path,
) -> None:
    """Unsandboxed, the policy runs on a thread nothing can stop: the command must still exit,
    and kill the process the policy started (the child process group)."""
    from apportion.demo import demo_clusters

    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps({"clusters": demo_clusters(), "metrics": {}}))
    pidfile = tmp_path / "child.pid"
    err = await _policies_test(
        tmp_path,
        snapshot,
        {"mode": "orphan", "pidfile": str(pidfile)},  # starts `sleep 60`, then loops
        "--unsandboxed",
    )
    assert b"[PolicyTimeout]" in err
    assert _gone(int(pidfile.read_text()))  # the policy's own child went with it


@pytest.mark.usefixtures("jailed")
async def test_policies_test_exits_after_a_sandboxed_policy_timeout(tmp_path: Path) -> None:
    """In the sandbox (the default), a policy that loops is stopped at its timeout."""
    from apportion.demo import demo_clusters

    snapshot = tmp_path / "snap.json"
    snapshot.write_text(json.dumps({"clusters": demo_clusters(), "metrics": {}}))
    err = await _policies_test(tmp_path, snapshot, {"mode": "loop"})
    assert b"[PolicyTimeout]" in err


async def _policies_test(
    tmp_path: Path, snapshot: Path, parameters: dict[str, object], *flags: str
) -> bytes:
    """Run ``apportion policies test`` on the misbehave policy with ``--timeout 1``; it must
    exit 1 (the guard of 120 s is the failure); return its stderr."""
    policy = Path(__file__).parent / "policies" / "misbehave"
    command = [
        sys.executable,
        "-c",
        "from apportion.cli.app import main; main()",
        "policies",
        "test",
        str(policy),
        "--snapshot",
        str(snapshot),
        "--inputs",
        '{"gpus": 1}',
        "--parameters",
        json.dumps(parameters),
        "--timeout",
        "1",
        *flags,
    ]
    env = {**os.environ, "APPORTION_CREDENTIALS": str(tmp_path / "none")}
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        _out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1, err
    return err


async def test_a_job_that_could_never_start_names_the_flags(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # as sbatch says "Requested node configuration is not available" (issue 10, item 1)
    refused = await cli(running, "submit", "--gpus", "2", "--gpu-model", "B200", "--", "true")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("apportion: --gpus, --gpu-model, --workers: the job can")
    assert "2 GPUs of model B200" in refused.stderr and "body." not in refused.stderr


async def test_submit_without_gpus_takes_the_queues_default(
    running: Running, fleet: list[dict[str, Any]]
) -> None:
    # --gpus left out is the queue's default_resources, --gpus 0 is 0 (issue 10, item 1)
    async with running.http.post(
        f"{running.url}/queues", json={"name": "one-gpu", "default_resources": {"gpus": 1}}
    ) as response:
        assert response.status == 201
    for flags, gpus in (([], 1), (["--gpus", "0"], 0)):
        ran = await cli(running, "submit", "--wait", "--queue", "one-gpu", *flags, "--", "true")
        assert ran.exit_code == 0, ran.output
        job_id = ran.stdout.split()[2]  # "Submitted job <id>"
        async with running.http.get(f"{running.url}/jobs/{job_id}") as response:
            assert (await response.json())["config"]["resources"]["gpus"] == gpus
