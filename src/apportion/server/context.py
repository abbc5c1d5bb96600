"""What the edges need from the rest of the server, in one typed bundle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from apportion.accounts import AccountBook
from apportion.adapters.base import Adapter
from apportion.adapters.plugins import AdapterPlugin
from apportion.allocation.holds import HoldManager
from apportion.allocation.service import AllocationService
from apportion.config import Settings
from apportion.files import FileBook
from apportion.jobs.duty import JobDuty
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
    duty: JobDuty | None = None
    adapters: Mapping[str, Adapter] = field(default_factory=dict)  # the scheduler adapters
    plugins: tuple[AdapterPlugin, ...] = ()  # the scheduler adapter plugins, loaded or not

    @property
    def jobs(self) -> JobService | None:
        """The job service while this server runs the jobs (:mod:`apportion.jobs.duty`): the
        routes that use it are ``on_leader``, forwarded to the server that runs them."""
        return None if self.duty is None else self.duty.service

    @property
    def files(self) -> FileBook | None:
        """The stored files, kept by the server that runs the jobs (which stage them)."""
        jobs = self.jobs
        return None if jobs is None else jobs.driver.files


CONTEXT: web.AppKey[ServerContext] = web.AppKey("apportion_context", ServerContext)
