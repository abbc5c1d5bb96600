"""Scheduler adapters: the :class:`~apportion.adapters.base.Adapter` protocol and one
package per backend (``local/``, ``slurm/``). An adapter is told what to run and answers what
it saw; it never changes a job record."""
