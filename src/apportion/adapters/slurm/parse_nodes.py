"""Slurm's view of its nodes and partitions (``sinfo --json``, ``scontrol show partition -o``,
GRES strings), and the ``nodeData`` entries (CONTRACTS §4) of a discovered Slurm cluster.

Called by :mod:`apportion.adapters.slurm.adapter` (discovery,
partitions) and by :mod:`apportion.adapters.slurm.usage` (metrics); no I/O. Malformed JSON
raises :class:`AdapterError` (retryable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from apportion.adapters.slurm.parse_text import load_json, parse_scontrol_record


@dataclass(frozen=True)
class SlurmNode:
    """One node as ``sinfo --json`` reported it (the fields discovery and usage need)."""

    name: str
    state: str
    cpus: int
    memory_mb: int
    gres: str  # "gpu:4", "gpu:a100:2(S:0-1),gpu:v100:2"
    gres_used: str
    partitions: tuple[str, ...]
    cpu_load: float | None = None  # load average, as sinfo reports it (hundredths → float)
    free_memory_mb: int | None = None


def parse_sinfo_nodes(text: str) -> list[SlurmNode]:
    """The nodes of ``sinfo --json`` output, sorted by name."""
    doc = load_json(text, "sinfo --json")
    nodes = [
        SlurmNode(
            name=str(n["name"]),
            state=str(n.get("state") or "").lower(),
            cpus=int(n.get("cpus") or 0),
            memory_mb=int(n.get("real_memory") or 0),
            gres=str(n.get("gres") or ""),
            gres_used=str(n.get("gres_used") or ""),
            partitions=tuple(str(p) for p in n.get("partitions") or ()),
            cpu_load=None if n.get("cpu_load") is None else float(n["cpu_load"]) / 100,
            free_memory_mb=None if n.get("free_memory") is None else int(n["free_memory"]),
        )
        for n in doc.get("nodes") or []
        if n.get("name")
    ]
    return sorted(nodes, key=lambda n: n.name)


_GRES_ITEM = re.compile(r"^gpu(?::(?P<type>[^:(]+))?:(?P<count>\d+)(?:\(.*\))?$")


def parse_gpu_gres(gres: str) -> list[tuple[str | None, int]]:
    """GPU entries of a GRES string: ``"gpu:a100:2(S:0),gpu:4,mps:100"`` → ``[("a100", 2), (None, 4)]``."""
    out: list[tuple[str | None, int]] = []
    for item in re.split(r",(?![^(]*\))", gres):  # commas outside "(S:0,1)"
        m = _GRES_ITEM.match(item.strip())
        if m:
            out.append((m.group("type"), int(m.group("count"))))
    return out


def node_data(
    nodes: list[SlurmNode], *, gpu_memory_mb: int = 0, unknown_model: str = "unknown"
) -> list[dict[str, Any]]:
    """``nodeData`` entries (CONTRACTS §4) for Slurm nodes.

    Slurm does not know a GPU's memory, so every GPU gets ``gpu_memory_mb`` (0 = unknown; set
    ``config.scheduler.gpu_memory_mb`` on the cluster); an untyped GRES gets model ``unknown_model``.
    """
    out: list[dict[str, Any]] = []
    for n in nodes:
        gpus = [
            {"modelName": model or unknown_model, "memory": gpu_memory_mb}
            for model, count in parse_gpu_gres(n.gres)
            for _ in range(count)
        ]
        out.append(
            {
                "id": n.name,
                "gpus": {
                    "count": len(gpus),
                    "memory": gpu_memory_mb * len(gpus),
                    "modelNames": sorted({g["modelName"] for g in gpus}),
                    "gpus": gpus,
                },
                "vcpus": {"count": n.cpus},
                "memory": n.memory_mb,
                "labels": {"slurmState": n.state, "slurmPartitions": ",".join(n.partitions)},
            }
        )
    return out


def parse_scontrol_partitions(text: str) -> list[dict[str, Any]]:
    """``scontrol show partition -o`` as ``[{name, nodes, state, default, maxTime, totalCpus, totalNodes}]``."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        rec = parse_scontrol_record(line)
        if "PartitionName" not in rec:
            continue
        out.append(
            {
                "name": rec["PartitionName"],
                "nodes": rec.get("Nodes", ""),
                "state": rec.get("State", "").lower(),
                "default": rec.get("Default") == "YES",
                "maxTime": rec.get("MaxTime", ""),
                "totalCpus": int(rec.get("TotalCPUs", "0") or 0),
                "totalNodes": int(rec.get("TotalNodes", "0") or 0),
            }
        )
    return sorted(out, key=lambda p: str(p["name"]))
