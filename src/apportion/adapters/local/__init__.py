"""The ``local`` adapter: every worker of a job is a real process on this host, started and
recorded by an executor that outlives the server (``adapter.py`` ties the parts together)."""
