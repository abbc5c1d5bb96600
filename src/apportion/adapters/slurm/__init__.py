"""The Slurm adapter (``adapter.py``), its pure parsers of Slurm 22.05 command output
(``parse_jobs``, ``parse_nodes``, ``parse_text``: no I/O, unit-tested on outputs recorded from a
real Slurm in ``tests/data/slurm/``), the batch script and the usage collector.

Facts about Slurm 22.05 (openapi/v0.0.38) the parsers rely on:

- ``squeue --json`` ignores ``-j``/``--jobs``: it always lists every job, so the parsers filter.
- a job's ``exit_code`` in ``squeue --json`` is the raw wait status (768 = exit 3, 15 = SIGTERM);
  ``sacct --json`` gives ``{"return_code", "signal": {"signal_id"}}``; ``scontrol`` ``ExitCode=3:0``.
- ``start_time``/``end_time`` of a pending or running job are *projections*; only a finished job's
  times are facts.
- ``scontrol`` has no ``--json``: ``scontrol show job -o`` prints one ``Key=Value`` line per record.
"""
