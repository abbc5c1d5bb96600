"""Prometheus metrics of one server, in the server's own registry.

Each :class:`Telemetry` has its own ``CollectorRegistry`` (never prometheus_client's global one),
so several servers can run in one process — as they do in the tests. The app builds one per
server and hands it to whoever counts: the allocation service (``allocations``,
``policy_latency``) and the event log (:meth:`Telemetry.observe_event` as a sink: ``events``,
and ``admissions`` and ``dispatches`` from the job events). The GPU and queue gauges are read
from their sources at every render.
``GET /metrics`` reads the sources on the event loop (:meth:`Telemetry.refresh`), then renders
the text (:meth:`Telemetry.exposition`) in a thread, so a scrape never stalls an allocation.

Label values are bounded: an allocation's ``policy`` label is the URI only when the app's
``known`` predicate (the policy store) knows it, else ``unknown`` (:data:`UNKNOWN_POLICY`), so a
client sending made-up policy names cannot grow the exposition; ``outcome`` is ``success`` or an
error code of :mod:`apportion.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

GpuSource = Callable[[], tuple[int, int, int]]
QueueSource = Callable[[], dict[str, tuple[int, int]]]
KnownPolicy = Callable[[str], bool]

UNKNOWN_POLICY = "unknown"
"""The ``policy`` label of every allocation that names a URI the policy store does not hold."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Policy evaluations: a built-in answers in about a millisecond, the default timeout is 10 s."""


class Telemetry:
    """The metric objects of one server (label them, then ``inc``/``set``/``observe``).

    ==================================  =========  ==========================================
    metric                              kind       labels
    ==================================  =========  ==========================================
    apportion_allocations_total         Counter    policy (a known URI or ``unknown``), outcome
                                                   (``success`` or error code)
    apportion_policy_latency_seconds    Histogram  policy (a known URI or ``unknown``)
    apportion_queue_depth               Gauge      queue (queued jobs)
    apportion_jobs_running              Gauge      queue
    apportion_admissions_total          Counter    queue
    apportion_dispatches_total          Counter    adapter, outcome
    apportion_gpus                      Gauge      state: held, free, total (read at render)
    apportion_events_total              Counter    type
    ==================================  =========  ==========================================
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.allocations = Counter(
            "apportion_allocations",
            "Allocation decisions, by policy and outcome (success or the error code).",
            ["policy", "outcome"],
            registry=reg,
        )
        self.policy_latency = Histogram(
            "apportion_policy_latency_seconds",
            "Time to evaluate a policy, in seconds.",
            ["policy"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_depth = Gauge(
            "apportion_queue_depth", "Jobs waiting in a queue.", ["queue"], registry=reg
        )
        self.jobs_running = Gauge(
            "apportion_jobs_running", "Jobs running from a queue.", ["queue"], registry=reg
        )
        self.admissions = Counter(
            "apportion_admissions", "Jobs admitted from a queue.", ["queue"], registry=reg
        )
        self.dispatches = Counter(
            "apportion_dispatches",
            "Dispatches to a scheduler adapter, by adapter and outcome.",
            ["adapter", "outcome"],
            registry=reg,
        )
        self.gpus = Gauge(
            "apportion_gpus", "GPUs of the fleet: held, free and total.", ["state"], registry=reg
        )
        self.events = Counter(
            "apportion_events", "Events stored and emitted, by type.", ["type"], registry=reg
        )
        self._gpu_source: GpuSource | None = None
        self._queue_source: QueueSource | None = None
        self._known_policy: KnownPolicy = lambda _uri: False
        self._allocation_children: dict[tuple[str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def set_gpu_source(self, fn: GpuSource) -> None:
        """Called once by the app: ``fn() -> (held, free, total)`` is read at every render, so
        the GPU gauges are never stale. A source that raises is logged and the gauges keep
        their last values."""
        self._gpu_source = fn

    def set_queue_source(self, fn: QueueSource) -> None:
        """``fn() -> {queue: (queued, running)}``, read at every render like the GPU source."""
        self._queue_source = fn

    def set_known_policy(self, fn: KnownPolicy) -> None:
        """Called once by the app: ``fn(uri)`` is True when the policy store holds ``uri``.
        Until then every allocation is counted under ``unknown``."""
        self._known_policy = fn

    def observe_allocation(self, policy: str, outcome: str, seconds: float) -> None:
        """Called by the allocation service after every decision (outcome: success or a code).
        The labelled children are looked up once per (policy, outcome): this runs per request.
        A URI the policy store does not know is counted as ``unknown``."""
        if not self._known_policy(policy):
            policy = UNKNOWN_POLICY
        counter = self._allocation_children.get((policy, outcome))
        if counter is None:
            counter = self.allocations.labels(policy=policy, outcome=outcome)
            self._allocation_children[(policy, outcome)] = counter
        counter.inc()
        latency = self._latency_children.get(policy)
        if latency is None:
            latency = self._latency_children[policy] = self.policy_latency.labels(policy=policy)
        latency.observe(seconds)

    async def observe_event(self, event: dict[str, Any]) -> None:
        """An :class:`~apportion.server.events.EventLog` sink counting events by type, and
        admissions and dispatches from the job events."""
        kind = str(event["type"])
        self.events.labels(type=kind).inc()
        if kind == "job_scheduled":
            self.admissions.labels(queue=str(event.get("queue", ""))).inc()
            self.dispatches.labels(adapter=str(event.get("adapter", "")), outcome="success").inc()
        elif kind == "job_completed" and str(event.get("reason", "")).startswith("dispatch failed"):
            self.dispatches.labels(adapter=str(event.get("adapter", "")), outcome="failure").inc()

    def render(self) -> tuple[bytes, str]:
        """:meth:`refresh` then :meth:`exposition`, in the caller's thread (tests, tools)."""
        self.refresh()
        return self.exposition()

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type. Touches only prometheus_client's
        (thread-safe) metric objects, so ``GET /metrics`` runs it in a worker thread."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def refresh(self) -> None:
        """Read the GPU and queue sources into their gauges. Called on the event loop (the
        sources read the fleet view and the job service, which live there)."""
        if self._gpu_source is not None:
            try:
                held, free, total = self._gpu_source()
            except Exception:
                log.exception("the GPU source of /metrics failed; GPU gauges not updated")
            else:
                self.gpus.labels(state="held").set(held)
                self.gpus.labels(state="free").set(free)
                self.gpus.labels(state="total").set(total)
        if self._queue_source is not None:
            try:
                queues = self._queue_source()
            except Exception:
                log.exception("the queue source of /metrics failed; queue gauges not updated")
            else:
                for queue, (queued, running) in queues.items():
                    self.queue_depth.labels(queue=queue).set(queued)
                    self.jobs_running.labels(queue=queue).set(running)
