"""Apportion: a policy-driven GPU allocation engine.

The import package's first level follows the design card: ``server`` (the edges),
``registry`` (clusters, nodes, GPUs, metrics, filters, the fleet view), ``policies``
(contract, store, sandbox, built-ins), ``engine`` (pure decision logic), ``allocation``
(requests, candidates, holds and leases), ``jobs`` (queues, admission, dispatch),
``adapters`` (local processes, Slurm), ``store`` (persistence), ``clients`` (the Python
client) and ``cli`` (the command line). ``app`` wires them together.
"""

__version__ = "0.1.0"
