"""The local collector: this machine's documents, NVML readings, and the push loop."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from types import SimpleNamespace
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from apportion.errors import InvalidRequest
from apportion.registry.collector import (
    LocalCollector,
    default_node_id,
    local_cluster_document,
    local_metrics_document,
    read_nvml_gpus,
)
from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.documents.ids import ID_PATTERN
from apportion.registry.documents.readers import expand_node_gpus
from apportion.registry.metrics import node_gpu_free_memory, validate_metrics_document

MB = 1024 * 1024


class FakeNVML:
    """Stands in for ``pynvml`` (no GPU on the test machines): two GPUs, power unsupported on one."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, *, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.shutdowns = 0
        self.gpus = [
            (b"NVIDIA H100", 81920 * MB, 1024 * MB, 40, 300_500, 51),
            ("NVIDIA L4", 24576 * MB, 0, 0, None, 35),
        ]

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self.gpus[h][0]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        total, used = self.gpus[h][1], self.gpus[h][2]
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self.gpus[h][3], memory=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        power = self.gpus[h][4]
        if power is None:
            raise RuntimeError("Not Supported")
        return power

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self.gpus[h][5]


def test_local_cluster_document_validates_and_is_plausible() -> None:
    doc = local_cluster_document()
    assert validate_cluster_document(doc) == doc
    assert doc["id"] == "local"
    node = doc["nodes"]["nodeData"][0]
    assert node["id"] == default_node_id()
    assert node["vcpus"]["count"] == os.cpu_count()
    assert node["memory"] == psutil.virtual_memory().total // MB > 0
    assert doc["config"]["scheduler"]["type"] == "local"
    assert doc["gpus"]["count"] == len(read_nvml_gpus() or [])


def test_local_cluster_document_takes_ids_and_refuses_bad_ones() -> None:
    doc = local_cluster_document("lab-1", "box.a")
    assert doc["id"] == "lab-1" and doc["nodes"]["nodeData"][0]["id"] == "box.a"
    with pytest.raises(InvalidRequest):
        local_cluster_document("bad id")


def test_local_metrics_document_validates_and_is_plausible() -> None:
    doc = local_metrics_document("lab-1", "box")
    assert validate_metrics_document(doc, cluster_id="lab-1") == doc
    node = doc["nodes"][0]
    assert node["id"] == "box"
    total = psutil.virtual_memory().total // MB
    assert 0 < node["memory"]["freeMem"] <= total
    assert 0 <= node["memory"]["usedMem"] <= total
    assert 0 <= node["memory"]["averageUtil"] <= 100
    assert all(node["vcpu"][k] >= 0 for k in ("load1m", "load5m", "load15m"))
    assert node["gpu"]["count"] == len(node["gpus"]) == len(read_nvml_gpus() or [])


def test_without_pynvml_there_are_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import now raises ImportError
    assert read_nvml_gpus() is None
    assert local_metrics_document()["nodes"][0]["gpus"] == []
    assert local_cluster_document()["gpus"] == {"count": 0, "memory": 0}


def test_nvml_init_failure_means_no_gpus() -> None:
    assert read_nvml_gpus(FakeNVML(fail_init=True)) is None


def test_nvml_readings_are_converted_to_mb_percent_watts() -> None:
    nvml = FakeNVML()
    readings = read_nvml_gpus(nvml)
    assert nvml.shutdowns == 1
    assert readings == [
        {
            "index": 0,
            "modelName": "NVIDIA H100",  # bytes decoded
            "totalMem": 81920,
            "usedMem": 1024,
            "freeMem": 80896,  # 81920 - 1024
            "memUtilization": 1.25,  # 100 × 1024 / 81920
            "cudaUtilization": 40.0,
            "powerUtilization": 300.5,  # 300500 mW
            "temperature": 51.0,
        },
        {
            "index": 1,
            "modelName": "NVIDIA L4",
            "totalMem": 24576,
            "usedMem": 0,
            "freeMem": 24576,
            "memUtilization": 0.0,
            "cudaUtilization": 0.0,
            "powerUtilization": 0.0,  # not supported: 0
            "temperature": 35.0,
        },
    ]


def test_local_documents_with_nvml_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())
    cluster = local_cluster_document(node_id="g")
    node = cluster["nodes"]["nodeData"][0]
    assert expand_node_gpus(node) == [
        {"modelName": "NVIDIA H100", "memory": 81920},
        {"modelName": "NVIDIA L4", "memory": 24576},
    ]
    assert cluster["gpus"] == {"count": 2, "memory": 106496}  # 81920 + 24576
    metrics = local_metrics_document(node_id="g")
    agg = metrics["nodes"][0]["gpu"]
    assert agg["count"] == 2 and agg["totalFreeMem"] == 105472  # 80896 + 24576
    assert agg["avgCudaUtilization"] == 20.0  # (40 + 0) / 2
    assert node_gpu_free_memory(metrics) == {("g", 0): (80896.0, 40.0), ("g", 1): (24576.0, 0.0)}


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [("gpu-box.lab", "gpu-box.lab"), ("my host!", "my-host-"), ("..x", "x"), ("", "localhost")],
)
def test_default_node_id_is_a_valid_id(
    monkeypatch: pytest.MonkeyPatch, hostname: str, expected: str
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert default_node_id() == expected
    assert ID_PATTERN.fullmatch(default_node_id())


async def test_collector_pushes_repeatedly_and_survives_a_failing_push() -> None:
    pushed: list[tuple[str, dict[str, Any]]] = []
    calls = 0
    two_pushed = asyncio.Event()

    async def push(cluster_id: str, doc: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store unavailable")
        pushed.append((cluster_id, doc))
        if len(pushed) >= 2:
            two_pushed.set()

    c = LocalCollector(push, cluster_id="lab", node_id="box", interval=0.05)
    task = asyncio.create_task(c.run())
    try:
        async with asyncio.timeout(30):  # a generous deadline: pushes come every 0.05 s
            await two_pushed.wait()
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.failures == 1
    assert c.pushes == len(pushed) >= 2
    for cluster_id, doc in pushed:
        assert cluster_id == "lab"
        assert validate_metrics_document(doc, cluster_id="lab") == doc
    stamps = [doc["timestamp"] for _, doc in pushed]
    assert stamps == sorted(stamps)


async def test_collector_keeps_its_cadence() -> None:
    starts: list[float] = []  # when each sample began (loop time)
    pushed: list[dict[str, Any]] = []
    enough = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def push(cluster_id: str, doc: dict[str, Any]) -> None:
        pushed.append(doc)
        if len(pushed) >= 6:
            enough.set()

    collector = LocalCollector(push, interval=0.05)
    sample = collector.sample

    async def timed_sample() -> dict[str, Any]:
        starts.append(loop.time())
        return await sample()

    collector.sample = timed_sample  # type: ignore[method-assign]
    task = asyncio.create_task(collector.run())
    try:
        async with asyncio.timeout(30):  # a generous deadline, not a timing assertion
            await enough.wait()
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # sample k starts no earlier than start + k × 0.05 (a late one never makes the next one
    # early): never faster than the cadence, however loaded the machine. The 0.025 s allow for
    # the first sample being recorded a little after the run's start; a loop without a cadence
    # would take 6 samples within a few ms
    assert len(pushed) >= 6
    for k, started in enumerate(starts):
        assert started - starts[0] >= 0.05 * k - 0.025, (k, starts)


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_collector_refuses_a_non_positive_interval(interval: float) -> None:
    async def push(cluster_id: str, doc: dict[str, Any]) -> None:
        return None

    with pytest.raises(ValueError, match="interval"):
        LocalCollector(push, interval=interval)
