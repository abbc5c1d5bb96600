"""The ``apportion`` command line (``app.py`` builds it; one module per command family)."""
