"""Cluster documents (CONTRACTS §4): the whole document in ``cluster.py``, its parts
beside it (ids, nodes, aggregates, readers)."""
