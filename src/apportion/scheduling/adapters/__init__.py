"""Scheduler adapters: where a placed job actually runs (``local`` processes, a real Slurm)."""
