"""The sandbox that evaluates uploaded policies out of process: the pool API (``pool.py``),
the slot that replaces a failed worker (``slot.py``), the parent's handle on one worker
process (``handle.py``) and the worker script itself (``worker.py``)."""
