"""The sandbox that evaluates every non-built-in policy out of process: the pool API (``pool.py``),
the slot that replaces a failed worker (``slot.py``), the parent's handle on one worker
process (``handle.py``), the bwrap jail it runs in (``jail.py``) and the worker script itself
(``worker.py``)."""
