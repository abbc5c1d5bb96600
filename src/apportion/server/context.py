"""What the edges need from the rest of the server, in one typed bundle."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from apportion.config import Settings
from apportion.policies.runtime import PolicyRuntime
from apportion.policies.store import PolicyStore
from apportion.registry.service import Registry
from apportion.scheduling.allocations import AllocationService
from apportion.scheduling.holds import HoldManager
from apportion.scheduling.jobs import JobService
from apportion.server.keys import KeyStore


@dataclass(frozen=True)
class ServerContext:
    settings: Settings
    registry: Registry
    policies: PolicyStore
    runtime: PolicyRuntime
    holds: HoldManager
    allocations: AllocationService
    keys: KeyStore
    jobs: JobService | None = None


CONTEXT: web.AppKey[ServerContext] = web.AppKey("apportion_context", ServerContext)
