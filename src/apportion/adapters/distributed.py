"""What the workers of a job need to meet each other, as ``torchrun`` sets it: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
(issue 13, item 5), so that PyTorch distributed code runs unchanged.

- ``RANK`` is the worker's index, ``WORLD_SIZE`` the number of workers; ``LOCAL_RANK`` its
  place among the job's workers on its node (by index) and ``LOCAL_WORLD_SIZE`` their number.
- ``MASTER_ADDR`` is the host of worker 0 (the adapter says how it is reached) and
  ``MASTER_PORT`` a port in 20000–29999 chosen from the run's id, so every worker — and a
  restarted server — computes the same one; a job that sets either in its ``env`` keeps its own.
- GPUs: as torchrun lays them out when every worker has one GPU — each worker of a node sees
  the GPUs of the job's workers on that node, in local-rank order, so ``cuda:LOCAL_RANK`` is its
  own (``torch.cuda.set_device(LOCAL_RANK)`` works unchanged). With more GPUs per worker, each
  sees only its own, numbered from 0.
"""

from __future__ import annotations

import hashlib

from apportion.adapters.base import JobSpec, WorkerSpec

PORT_BASE = 20000
PORT_SPAN = 10000


def rendezvous_port(run_id: str) -> int:
    """The job run's ``MASTER_PORT``: the same for every worker and after a restart."""
    return PORT_BASE + int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % PORT_SPAN


def local_ranks(workers: tuple[WorkerSpec, ...]) -> dict[int, tuple[int, int]]:
    """``(LOCAL_RANK, LOCAL_WORLD_SIZE)`` of each worker (by index): its place among the
    workers on its node, in index order, and their number."""
    by_node: dict[str, list[int]] = {}
    for worker in sorted(workers, key=lambda w: w.index):
        by_node.setdefault(worker.node_id, []).append(worker.index)
    return {
        index: (place, len(indices))
        for indices in by_node.values()
        for place, index in enumerate(indices)
    }


def visible_gpus(spec: JobSpec, worker: WorkerSpec) -> tuple[str, ...]:
    """The GPUs ``worker`` sees (``CUDA_VISIBLE_DEVICES``): torchrun's layout when every worker
    of the job has exactly one GPU (the job's GPUs on its node, in local-rank order), else its
    own."""
    if len(spec.workers) > 1 and all(len(w.gpus) == 1 for w in spec.workers):
        on_node = sorted(
            (w for w in spec.workers if w.node_id == worker.node_id), key=lambda w: w.index
        )
        return tuple(w.gpus[0] for w in on_node)
    return worker.gpus


def torchrun_environment(spec: JobSpec, worker: WorkerSpec, master_addr: str) -> dict[str, str]:
    """torchrun's variables for ``worker`` (``MASTER_ADDR``/``MASTER_PORT`` from ``spec.env``
    when the job set them)."""
    local_rank, local_size = local_ranks(spec.workers)[worker.index]
    return {
        "RANK": str(worker.index),
        "WORLD_SIZE": str(len(spec.workers)),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_size),
        "MASTER_ADDR": spec.env.get("MASTER_ADDR", master_addr),
        "MASTER_PORT": spec.env.get("MASTER_PORT", str(rendezvous_port(spec.run_id))),
    }
