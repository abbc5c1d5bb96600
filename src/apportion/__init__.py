"""Apportion: a policy-driven GPU allocation engine.

The import package's first level follows the design card: ``server`` (the edges),
``registry`` (clusters, nodes, GPUs, metrics, filters, the fleet view), ``policies``
(contract, store, sandbox, built-ins), ``engine`` (pure decision logic),
``scheduling`` (holds, leases, queues, jobs, adapters), ``store`` (persistence) and
``clients`` (Python client and CLI). ``app`` wires them together.
"""

__version__ = "0.1.0"
