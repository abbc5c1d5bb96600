"""The ``local`` adapter: every worker of a job is a real process on this host, under a
supervisor that outlives the server (``adapter.py`` ties the parts together)."""
