"""The local machine as a one-node cluster: its registry document and live metrics.

``apportion serve`` registers :func:`local_cluster_document` at start and runs a
:class:`LocalCollector` in its task group to push :func:`local_metrics_document` every
``interval`` seconds. Memory comes from psutil, load averages from ``os.getloadavg``, GPUs from
NVML (``nvidia-ml-py``, module ``pynvml``) when it imports and initialises; without NVML the
machine has no GPUs. Units: MB, %, W, °C.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs installed

from apportion.registry.documents.cluster import validate_cluster_document
from apportion.registry.metrics import validate_metrics_document
from apportion.timefmt import iso_utc

log = logging.getLogger(__name__)

_MB = 1024 * 1024
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9._-]")

PushFn = Callable[[str, dict[str, Any]], Awaitable[object]]
"""``push(cluster_id, metrics_doc)``: stores a metrics document (e.g. the registry's put)."""


def default_node_id() -> str:
    """This machine's hostname made into a valid node id (``localhost`` if nothing is left)."""
    name = _NOT_ID_CHAR.sub("-", socket.gethostname()).lstrip("._-")[:128]
    return name or "localhost"


def read_nvml_gpus(nvml: Any | None = None) -> list[dict[str, Any]] | None:
    """Per-GPU readings from NVML in index order, or None when NVML is unavailable.

    ``nvml`` is the ``pynvml`` module (imported lazily when not given). Each reading is
    ``{"index", "modelName", "totalMem", "usedMem", "freeMem", "memUtilization",
    "cudaUtilization", "powerUtilization", "temperature"}``; ``memUtilization`` is the share of
    memory in use (%), ``powerUtilization`` the draw in W. A reading NVML cannot give is 0.
    """
    if nvml is None:
        try:
            import pynvml  # optional dependency (nvidia-ml-py), loaded only when present
        except ImportError:
            return None
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception:
        log.debug("NVML is not available; reporting no GPUs", exc_info=True)
        return None
    try:
        return [_read_one(nvml, i) for i in range(int(nvml.nvmlDeviceGetCount()))]
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


def _read_one(nvml: Any, index: int) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    total, used = int(mem.total) // _MB, int(mem.used) // _MB
    reading: dict[str, Any] = {
        "index": index,
        "modelName": name.decode() if isinstance(name, bytes) else str(name),
        "totalMem": total,
        "usedMem": used,
        "freeMem": int(mem.free) // _MB,
        "memUtilization": round(100.0 * used / total, 2) if total else 0.0,
        "cudaUtilization": 0.0,
        "powerUtilization": 0.0,
        "temperature": 0.0,
    }
    optional: list[tuple[str, Callable[[], float]]] = [
        ("cudaUtilization", lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
        ("powerUtilization", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        (
            "temperature",
            lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        ),
    ]
    for key, read in optional:
        try:
            reading[key] = read()
        except Exception:  # not supported on every GPU (e.g. power on some boards)
            log.debug("NVML cannot read %s of GPU %d", key, index, exc_info=True)
    return reading


def local_node_metrics(node_id: str) -> dict[str, Any]:
    """One ``nodes[]`` entry of a metrics document for this machine (may block on NVML)."""
    vm = psutil.virtual_memory()
    load1, load5, load15 = os.getloadavg()
    gpus = [
        {"gpu_id": r["index"], **{k: v for k, v in r.items() if k not in ("index", "modelName")}}
        for r in read_nvml_gpus() or []
    ]

    def mean(key: str) -> float:
        return sum(g[key] for g in gpus) / len(gpus) if gpus else 0.0

    return {
        "id": node_id,
        "memory": {
            "freeMem": vm.available // _MB,
            "usedMem": (vm.total - vm.available) // _MB,
            "averageUtil": float(vm.percent),
        },
        "vcpu": {"load1m": load1, "load5m": load5, "load15m": load15},
        "gpu": {
            "totalUsedMem": sum(g["usedMem"] for g in gpus),
            "totalFreeMem": sum(g["freeMem"] for g in gpus),
            "totalMem": sum(g["totalMem"] for g in gpus),
            "avgMemUtilization": mean("memUtilization"),
            "avgCudaUtilization": mean("cudaUtilization"),
            "count": len(gpus),
        },
        "gpus": gpus,
    }


def local_cluster_document(cluster_id: str = "local", node_id: str | None = None) -> dict[str, Any]:
    """A validated cluster document for this machine: one node (the hostname by default),
    ``vcpus = os.cpu_count()``, memory in MB, GPUs from NVML (none without it), scheduler
    ``local``. Raises :class:`~apportion.errors.InvalidRequest` for an invalid id."""
    readings = read_nvml_gpus() or []
    node = {
        "id": node_id or default_node_id(),
        "gpus": {
            "count": len(readings),
            "gpus": [{"modelName": r["modelName"], "memory": r["totalMem"]} for r in readings],
            "features": [],
        },
        "vcpus": {"count": os.cpu_count() or 1},
        "memory": psutil.virtual_memory().total // _MB,
    }
    doc = {
        "id": cluster_id,
        "status": "live",
        "nodes": {"count": 1, "nodeData": [node]},
        "config": {"scheduler": {"type": "local"}},
        "tags": ["local"],
    }
    return validate_cluster_document(doc, path="local cluster")


def local_metrics_document(cluster_id: str = "local", node_id: str | None = None) -> dict[str, Any]:
    """A validated metrics document for this machine, timestamped now (may block on NVML)."""
    node = local_node_metrics(node_id or default_node_id())
    doc = {
        "clusterId": cluster_id,
        "timestamp": iso_utc(time.time(), zulu_ms=True),
        "cluster": {"memory": dict(node["memory"]), "vcpu": dict(node["vcpu"]), "gpu": node["gpu"]},
        "nodes": [node],
    }
    return validate_metrics_document(doc, cluster_id=cluster_id, path="local metrics")


class LocalCollector:
    """Pushes this machine's metrics document every ``interval`` seconds.

    Created by the app wiring and run in its task group: ``await collector.run()`` loops until
    cancelled. Sampling runs in a worker thread (NVML may block). A failing sample or push is
    logged and counted in ``failures``, never fatal; successful pushes are counted in
    ``pushes``. Raises ``ValueError`` for a non-positive interval.
    """

    def __init__(
        self,
        push: PushFn,
        *,
        cluster_id: str = "local",
        node_id: str | None = None,
        interval: float = 30.0,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self._push = push
        self.cluster_id = cluster_id
        self.node_id = node_id or default_node_id()
        self.interval = interval
        self.pushes = 0
        self.failures = 0

    async def sample(self) -> dict[str, Any]:
        """One metrics document, sampled in a worker thread."""
        return await asyncio.to_thread(local_metrics_document, self.cluster_id, self.node_id)

    async def run(self) -> None:
        """Sample and push forever, on a fixed cadence; returns only by cancellation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            try:
                await self._push(self.cluster_id, await self.sample())
                self.pushes += 1
            except Exception:
                self.failures += 1
                log.exception(
                    "pushing local metrics for cluster %r failed; next try in %.3g s",
                    self.cluster_id,
                    self.interval,
                )
            deadline = max(deadline + self.interval, loop.time())
            await asyncio.sleep(deadline - loop.time())
