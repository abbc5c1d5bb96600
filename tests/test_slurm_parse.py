"""Parsers of Slurm output, on outputs recorded from the real Slurm 22.05 of scripts/slurm_up.sh.

tests/data/slurm/ was captured while jobs 4-9 were in these states (job_ids.txt lists them):
4 running on n3 with gpu:4, 5 pending (Resources) behind it, 6 completed, 7 ``exit 3``,
8 cancelled while sleeping, 9 a 2-node gang running; jobs 1-3 are earlier smoke jobs
(1 completed, 2 cancelled, 3 ``exit 3``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apportion.adapters.base import AdapterError, BackendState
from apportion.adapters.slurm.parse_jobs import (
    _STATES,
    SlurmJob,
    parse_scontrol_job,
    parse_squeue,
    split_wait_status,
    status_of,
)
from apportion.adapters.slurm.parse_nodes import (
    SlurmNode,
    node_data,
    parse_gpu_gres,
    parse_scontrol_partitions,
    parse_sinfo_nodes,
)
from apportion.adapters.slurm.parse_text import (
    format_walltime,
    parse_sbatch_parsable,
    parse_scontrol_record,
)
from apportion.registry.documents.cluster import validate_cluster_document

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_recorded_job_ids_are_the_ones_described() -> None:
    assert read("job_ids.txt").split() == ["4", "5", "6", "7", "8", "9"]


@pytest.mark.parametrize(
    ("job_id", "state", "return_code", "reason"),
    [
        ("4", BackendState.RUNNING, None, None),
        ("5", BackendState.PENDING, None, "waiting in Slurm: Resources"),
        ("6", BackendState.COMPLETED, 0, None),
        ("7", BackendState.FAILED, 3, "exit code 3"),  # raw wait status 768 = 3 << 8
        ("8", BackendState.CANCELLED, -15, "cancelled in Slurm"),  # raw 15 = SIGTERM
        ("9", BackendState.RUNNING, None, None),
        ("3", BackendState.FAILED, 3, "exit code 3"),
    ],
)
def test_squeue_states(
    job_id: str, state: BackendState, return_code: int | None, reason: str | None
) -> None:
    jobs = {j.job_id: j for j in parse_squeue(read("squeue_mixed.json"))}
    status = status_of(jobs[job_id])
    assert (status.state, status.return_code, status.reason) == (state, return_code, reason)


def test_squeue_fields_and_projected_times() -> None:
    jobs = {j.job_id: j for j in parse_squeue(read("squeue_mixed.json"))}
    assert sorted(jobs, key=int) == [str(i) for i in range(1, 10)]
    assert (jobs["9"].nodes, jobs["9"].comment, jobs["9"].name) == (
        "n[1-2]",
        "apportion:rec-gang",
        "apportion:rec-gang:demo",
    )
    assert jobs["5"].start_time is None  # a pending job's start time is only a projection
    assert jobs["4"].start_time is not None and jobs["4"].end_time is None  # still running
    done = jobs["8"]
    assert done.start_time is not None and done.end_time is not None
    assert done.end_time - done.start_time == 2  # cancelled 2 s after it started


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, (0, None)),
        (768, (3, None)),  # 3 * 256
        (65280, (255, None)),  # 255 * 256
        (15, (None, 15)),  # SIGTERM
        (137, (None, 9)),  # 128 (core-dump bit) + SIGKILL
    ],
)
def test_split_wait_status(raw: int, expected: tuple[int | None, int | None]) -> None:
    assert split_wait_status(raw) == expected


@given(st.integers(0, 255), st.integers(1, 127))
def test_wait_status_round_trip(code: int, signal: int) -> None:
    assert split_wait_status(code << 8) == (code, None)
    assert split_wait_status(signal) == (None, signal)


@pytest.mark.parametrize(
    ("file", "job_id", "state", "return_code"),
    [
        ("scontrol_job_failed.txt", "7", BackendState.FAILED, 3),  # ExitCode=3:0
        ("scontrol_job_completed.txt", "6", BackendState.COMPLETED, 0),
        ("scontrol_job_gang_running.txt", "9", BackendState.RUNNING, None),
    ],
)
def test_scontrol_job(file: str, job_id: str, state: BackendState, return_code: int | None) -> None:
    job = parse_scontrol_job(read(file))
    assert job is not None and job.job_id == job_id
    status = status_of(job)
    assert (status.state, status.return_code) == (state, return_code)


def test_scontrol_job_details() -> None:
    gang = parse_scontrol_job(read("scontrol_job_gang_running.txt"))
    assert gang is not None
    assert (gang.comment, gang.nodes, gang.end_time) == ("apportion:rec-gang", "n[1-2]", None)
    assert gang.start_time is not None
    failed = parse_scontrol_job(read("scontrol_job_failed.txt"))
    assert failed is not None and failed.end_time is not None and failed.reason == "NonZeroExitCode"


def test_scontrol_unknown_job_prints_no_record() -> None:
    assert "Invalid job id" in read("scontrol_unknown_job.txt")
    assert parse_scontrol_job(read("scontrol_unknown_job.txt")) is None


def test_scontrol_record_keeps_values_with_spaces() -> None:
    first = read("scontrol_nodes_busy.txt").splitlines()[0]
    rec = parse_scontrol_record(first)
    assert rec["NodeName"] == "n1" and rec["Gres"] == "gpu:4" and rec["RealMemory"] == "8000"
    assert rec["OS"].startswith("Linux ") and " " in rec["OS"]
    assert rec["AllocTRES"] == "cpu=1,mem=100M"


def test_partitions() -> None:
    parts = parse_scontrol_partitions(read("scontrol_partitions.txt"))
    assert [(p["name"], p["default"], p["state"]) for p in parts] == [
        ("cpu", True, "up"),
        ("gpu", False, "up"),
    ]
    assert parts[1]["totalCpus"] == 24 and parts[1]["totalNodes"] == 3  # 3 nodes x 8 CPUs


def test_sinfo_nodes_busy_and_idle() -> None:
    busy = parse_sinfo_nodes(read("sinfo_busy.json"))
    # n1: gang worker (1 GPU); n2: gang worker (1); n3: job 4 (4 GPUs)
    assert [(n.name, n.state, n.gres, n.gres_used) for n in busy] == [
        ("n1", "mixed", "gpu:4", "gpu:1"),
        ("n2", "mixed", "gpu:4", "gpu:1"),
        ("n3", "mixed", "gpu:4", "gpu:4"),
    ]
    idle = parse_sinfo_nodes(read("sinfo_idle.json"))
    assert {n.state for n in idle} == {"idle"} and {n.gres_used for n in idle} == {"gpu:0"}
    assert all((n.cpus, n.memory_mb, n.partitions) == (8, 8000, ("cpu", "gpu")) for n in idle)


@pytest.mark.parametrize(
    ("gres", "expected"),
    [
        ("gpu:4", [(None, 4)]),
        ("gpu:a100:2(S:0-1)", [("a100", 2)]),
        ("gpu:a100:2,gpu:v100:1", [("a100", 2), ("v100", 1)]),
        ("gpu:tesla:2(S:0,1),gpu:1", [("tesla", 2), (None, 1)]),  # comma inside (S:…)
        ("gpu:4,mps:100", [(None, 4)]),
        ("(null)", []),
        ("", []),
    ],
)
def test_gpu_gres(gres: str, expected: list[tuple[str | None, int]]) -> None:
    assert parse_gpu_gres(gres) == expected


def test_node_data_is_a_valid_cluster_document() -> None:
    nodes = parse_sinfo_nodes(read("sinfo_idle.json"))
    data = node_data(nodes, gpu_memory_mb=1000)
    doc = validate_cluster_document({"id": "s", "nodes": {"nodeData": data}})
    # 3 nodes x 4 GPUs x 1000 MB; 3 x 8 vCPUs; 3 x 8000 MB
    assert (doc["gpus"]["count"], doc["gpus"]["memory"]) == (12, 12000)
    assert (doc["vcpus"]["count"], doc["memory"]) == (24, 24000)
    assert data[0]["gpus"]["modelNames"] == ["unknown"]


def test_node_data_typed_gres_keeps_models_in_order() -> None:
    node = SlurmNode("g1", "idle", 64, 512000, "gpu:h100:2,gpu:a100:1", "gpu:0", ("p",))
    (entry,) = node_data([node])
    assert [g["modelName"] for g in entry["gpus"]["gpus"]] == ["h100", "h100", "a100"]
    assert entry["gpus"]["modelNames"] == ["a100", "h100"] and entry["gpus"]["memory"] == 0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (1, "0-00:00:01"),
        (90.2, "0-00:01:31"),  # rounded up to whole seconds
        (3600, "0-01:00:00"),
        (86400 + 3661, "1-01:01:01"),
        (0.001, "0-00:00:01"),
    ],
)
def test_format_walltime(seconds: float, expected: str) -> None:
    assert format_walltime(seconds) == expected


def test_sbatch_parsable() -> None:
    assert parse_sbatch_parsable("42\n") == "42"
    assert parse_sbatch_parsable("42;cluster\n") == "42"
    with pytest.raises(AdapterError, match="no job id"):
        parse_sbatch_parsable(read("sbatch_bad_partition.txt"))


def test_bad_json_is_a_retryable_error() -> None:
    with pytest.raises(AdapterError, match="squeue --json printed no JSON") as err:
        parse_squeue("slurm_load_jobs error: Unable to contact slurm controller")
    assert err.value.retryable
    with pytest.raises(AdapterError, match="reported errors"):
        parse_sinfo_nodes('{"meta": {}, "errors": [{"error": "boom"}], "nodes": []}')


def test_sacct_disabled_message_is_what_the_adapter_looks_for() -> None:
    # the adapter turns accounting off when sacct's output says "disabled"
    assert "disabled" in read("sacct_disabled.txt") and "rc=1" in read("sacct_disabled.txt")


def test_every_slurm_state_maps_and_finished_ones_say_why() -> None:
    for word, state in _STATES.items():
        status = status_of(SlurmJob("1", word, exit_status=0 if state.finished else None))
        assert status.state is state
        if state is BackendState.FAILED:
            assert status.reason, word
        if state is BackendState.COMPLETED:
            assert status.return_code == 0
    odd = status_of(SlurmJob("1", "NEW_STATE"))
    assert odd.state is BackendState.UNKNOWN and odd.reason == "unknown Slurm state 'NEW_STATE'"
