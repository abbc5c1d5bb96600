"""Repositories, one module per table family: the only SQL in the package.

Each takes the :class:`~apportion.store.db.Database` and speaks in small frozen row dataclasses
(documents as the JSON text they are stored as; decoding them is the domain's business). The
``write_changes`` functions of holds, jobs and events are batch functions for a
:class:`~apportion.store.committer.GroupCommitter`; every other write is one transaction.
"""
