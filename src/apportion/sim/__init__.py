"""The simulator: a workload replayed through the admission decisions on a virtual clock
(``apportion simulate``; docs/scheduling.md, "Trying a configuration on a trace")."""
