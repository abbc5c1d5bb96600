"""Pure parsers of Slurm 22.05 command output (``squeue``/``sinfo``/``sacct`` JSON, ``scontrol -o``).

Called by :mod:`apportion.scheduling.adapters.slurm` on the text a Slurm command printed; they do
no I/O, so they are unit-tested on outputs recorded from a real Slurm (``tests/data/slurm/``).
Malformed output raises :class:`AdapterError` (retryable: the next poll may read a good one).

This module is the one import path of the parsers; they live beside it, one job each:
:mod:`.slurm_job_parse` (jobs and their :class:`BackendStatus`), :mod:`.slurm_node_parse`
(nodes, GRES, partitions, ``nodeData``) and :mod:`.slurm_text` (JSON documents, ``scontrol``
records, ``sbatch --parsable``, ``--time``).

Facts about Slurm 22.05 (openapi/v0.0.38) these functions rely on:

- ``squeue --json`` ignores ``-j``/``--jobs``: it always lists every job, so callers filter here.
- a job's ``exit_code`` in ``squeue --json`` is the raw wait status (768 = exit 3, 15 = SIGTERM);
  ``sacct --json`` gives ``{"return_code", "signal": {"signal_id"}}``; ``scontrol`` ``ExitCode=3:0``.
- ``start_time``/``end_time`` of a pending or running job are *projections*; only a finished job's
  times are facts.
- ``scontrol`` has no ``--json``: ``scontrol show job -o`` prints one ``Key=Value`` line per record.
"""

from __future__ import annotations

from apportion.scheduling.adapters.slurm_job_parse import (
    _STATES,
    SlurmJob,
    parse_sacct,
    parse_scontrol_job,
    parse_squeue,
    sacct_cpu_seconds,
    split_wait_status,
    status_of,
)
from apportion.scheduling.adapters.slurm_node_parse import (
    SlurmNode,
    node_data,
    parse_gpu_gres,
    parse_scontrol_partitions,
    parse_sinfo_nodes,
)
from apportion.scheduling.adapters.slurm_text import (
    format_walltime,
    load_json,
    parse_sbatch_parsable,
    parse_scontrol_record,
)

__all__ = [
    "_STATES",
    "SlurmJob",
    "SlurmNode",
    "format_walltime",
    "load_json",
    "node_data",
    "parse_gpu_gres",
    "parse_sacct",
    "parse_sbatch_parsable",
    "parse_scontrol_job",
    "parse_scontrol_partitions",
    "parse_scontrol_record",
    "parse_sinfo_nodes",
    "parse_squeue",
    "sacct_cpu_seconds",
    "split_wait_status",
    "status_of",
]
