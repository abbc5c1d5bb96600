"""The allocation use case: wire messages, candidate clusters, the allocation service
(policy evaluation over a fleet snapshot) and holds with their leases and journal."""
