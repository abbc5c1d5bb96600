"""What the edges need from the rest of the server, in one typed bundle."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from apportion.accounts import AccountBook
from apportion.adapters.plugins import AdapterPlugin
from apportion.allocation.holds import HoldManager
from apportion.allocation.service import AllocationService
from apportion.config import Settings
from apportion.files import FileBook
from apportion.jobs.service import JobService
from apportion.policies.runtime import PolicyRuntime
from apportion.policies.store import PolicyStore
from apportion.registry.service import Registry
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
    accounts: AccountBook
    files: FileBook
    jobs: JobService | None = None
    plugins: tuple[AdapterPlugin, ...] = ()  # the scheduler adapter plugins, loaded or not


CONTEXT: web.AppKey[ServerContext] = web.AppKey("apportion_context", ServerContext)
