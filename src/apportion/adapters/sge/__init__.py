"""The ``sge`` adapter: Son of Grid Engine (seed 002's scheduler)."""
