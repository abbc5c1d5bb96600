"""The simulator's engine: a trace replayed on a virtual clock through the server's admission
decisions — the multifactor order (``jobs/priority.py``) with fair share
(``jobs/fairshare.py``), EASY backfill on walltimes (``jobs/backfill.py``), priority
preemption (``jobs/preemption.py``) and the built-in placement kernel
(``engine/placement.py``) over a fleet view — event by event: at each arrival or end, one
admission cycle as the server runs it (and, when it preempted, another at once, as the
server's next cycle places the preemptor).

What it leaves out (docs/scheduling.md says so too): queue limits, quotas and the reclaim of
lent quota (the trace has one queue), the ``max_bypass`` backstop, live metrics, and the time
a dispatch or a preemption's grace period takes; a job runs for its trace duration, cut at its
walltime, and a preempted job starts again from the beginning.
"""

from __future__ import annotations

import heapq
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from apportion.engine.capacity import gang_capacity
from apportion.engine.decisions import Placed, Placement
from apportion.engine.placement import place
from apportion.engine.requests import GpuRequest
from apportion.engine.stage import Strategy
from apportion.jobs.backfill import NEVER, Gang, Reservation, Timeline
from apportion.jobs.fairshare import AccountShare, UsageBook, account_shares
from apportion.jobs.models import JobConfig, JobStatus, WorkerResources
from apportion.jobs.preemption import PreemptionRules, choose_victims
from apportion.jobs.priority import Multifactor, SchedulingConfig
from apportion.jobs.records import Job
from apportion.ownership import Owner
from apportion.registry.fleet import FleetView
from apportion.sim.trace import TraceJob


class SimConfig(BaseModel):
    """One configuration to try (a TOML file): the server's ``[scheduling]`` settings, the
    backfill rule, the accounts' shares and the placement policy."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=100)
    scheduling: SchedulingConfig = Field(default_factory=SchedulingConfig)
    # easy: the server's rule; none: strict order (no job starts before one that waits)
    backfill: Literal["easy", "none"] = "easy"
    shares: dict[str, int] = Field(default_factory=dict)  # accounts not named have 1
    policy: Strategy = Strategy.BINPACK
    # the trace's queue lets a job preempt jobs of lower priority (preempt_lower_priority)
    preemption: bool = False


def read_config(path: Path) -> SimConfig:
    """A configuration file; ``ValueError`` naming the file and the field otherwise."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        config = SimConfig.model_validate(data)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from None
    return config if config.name else config.model_copy(update={"name": path.stem})


@dataclass
class Outcome:
    """What became of one job of the trace."""

    job: TraceJob
    start: float | None = None  # of its last run
    end: float | None = None
    backfilled: bool = False  # it started while a job before it in line waited
    preempted: int = 0  # how often
    lost: float = 0.0  # seconds run by the runs that were preempted
    run_starts: list[float] = field(default_factory=list)  # of every run, the last one's too

    @property
    def wait(self) -> float | None:
        return None if self.start is None else self.start - self.job.submit

    @property
    def ran(self) -> float:
        """Seconds of its last run (the one that ended)."""
        return 0.0 if self.start is None or self.end is None else self.end - self.start


@dataclass(frozen=True)
class Preemption:
    """At ``at``, the job of index ``victim`` (in the trace) was stopped for ``preemptor``;
    the run it stopped had started at ``run_started``."""

    at: float
    victim: int
    preemptor: int
    run_started: float


@dataclass
class SimResult:
    """A configuration's run over a trace: each job's outcome, the fleet's size, and each
    account's part of the (decayed) usage over time."""

    config: SimConfig
    outcomes: list[Outcome]
    total_gpus: int
    never_fit: int  # jobs larger than any cluster of the fleet, left out
    share_samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)


@dataclass
class Cycle:
    """One admission cycle's inputs (the waiting jobs by index in the trace, every job's
    record, request and outcome, the GPUs free) and what it did: the jobs it started, in
    order, and those it preempted, for whom."""

    now: float
    waiting: list[int]
    records: list[Job]
    requests: list[GpuRequest]
    outcomes: list[Outcome]
    free: int
    running: list[Job] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    preempted: list[tuple[int, float]] = field(default_factory=list)  # and their runs' starts
    preemptor: int = -1
    wake_at: float = NEVER  # when a job that could not preempt may next


@dataclass(order=True)
class _End:
    at: float
    seq: int
    index: int = field(compare=False)


class Simulation:
    """One configuration over one fleet (see the module's docstring)."""

    def __init__(self, fleet_docs: list[dict[str, Any]], config: SimConfig) -> None:
        self.config = config
        self.fleet = FleetView()
        for doc in fleet_docs:
            self.fleet.set_cluster(doc)
        self.structure = self.fleet.structure
        self.clusters = sorted(self.structure.cluster_ids)
        self.total_gpus = self.structure.n_gpus
        self.usage = UsageBook(config.scheduling.fair_share_half_life_seconds)
        self._shares_of: dict[str, int] = {}  # every account of the trace: its shares
        self._held_rows: dict[int, list[int]] = {}  # each running job's GPU rows
        self._run_of: dict[int, int] = {}  # each running job's run (its end event's seq)
        self._rules = PreemptionRules(config.scheduling)
        self._jobs: dict[str, Job] = {}  # every job of the trace, by id (the rules' view)
        # per GPU row: when the job on it is expected to end (0: free)
        self._busy_until = np.zeros(self.structure.n_gpus, dtype=np.float64)

    def run(self, trace: list[TraceJob], *, samples: int = 200) -> SimResult:
        """Replay ``trace`` (by submit time) to its end; every job that fits the fleet runs."""
        outcomes = [Outcome(job) for job in trace]
        records = [self._record(i, job) for i, job in enumerate(trace)]
        self._jobs = {record.job_id: record for record in records}
        self._shares_of = {a: self.config.shares.get(a, 1) for a in {j.account for j in trace}}
        requests = [self._request(job) for job in trace]
        fits = [self._could_ever_fit(requests[i], job.workers) for i, job in enumerate(trace)]
        never_fit = fits.count(False)
        ends: list[_End] = []
        waiting: list[int] = []
        running: set[int] = set()
        free = self.total_gpus
        next_arrival, seq = 0, 0
        sample_every = max(1, len(trace) // max(samples, 1))
        result = SimResult(self.config, outcomes, self.total_gpus, never_fit)
        wakes: list[float] = []  # when to run a cycle though nothing arrives or ends
        while next_arrival < len(trace) or ends:
            now = min(
                trace[next_arrival].submit if next_arrival < len(trace) else NEVER,
                ends[0].at if ends else NEVER,
                wakes[0] if wakes else NEVER,
            )
            while wakes and wakes[0] <= now:
                heapq.heappop(wakes)
            while ends and ends[0].at <= now:
                event = heapq.heappop(ends)
                done = event.index
                if self._run_of.get(done) != event.seq:
                    continue  # a run that was preempted
                running.discard(done)
                free += self._gpus(trace[done])
                self._finish(records[done], outcomes[done], now)
                if done % sample_every == 0:
                    active = [records[i] for i in running]
                    result.share_samples.append((now, self._parts(now, active)))
            while next_arrival < len(trace) and trace[next_arrival].submit <= now:
                if fits[next_arrival]:
                    waiting.append(next_arrival)
                next_arrival += 1
            cycle = Cycle(now, waiting, records, requests, outcomes, free)
            while True:
                cycle.running = [records[i] for i in running]
                self._cycle(cycle)
                for started in cycle.started:
                    waiting.remove(started)
                    running.add(started)
                    job = trace[started]
                    length = min(job.duration, job.walltime or NEVER)
                    seq += 1
                    self._run_of[started] = seq
                    heapq.heappush(ends, _End(now + length, seq, started))
                for stopped, run_started in cycle.preempted:
                    running.discard(stopped)
                    waiting.append(stopped)
                    result.preemptions.append(
                        Preemption(now, stopped, cycle.preemptor, run_started)
                    )
                if not cycle.preempted:
                    break
                cycle = Cycle(now, waiting, records, requests, outcomes, cycle.free)
            free = cycle.free
            if cycle.wake_at < NEVER:
                heapq.heappush(wakes, cycle.wake_at)
        return result

    # ---------------------------------------------------------------- one cycle
    def _cycle(self, cycle: Cycle) -> None:
        """One admission cycle at ``cycle.now``: the jobs it starts (in order) and those it
        preempts go to ``cycle``."""
        if not cycle.waiting:
            return
        now, records, requests = cycle.now, cycle.records, cycle.requests
        multifactor = self._multifactor(now, cycle.running)
        order = [int(j.seq) for j in multifactor.order([records[i] for i in cycle.waiting])]
        timeline: Timeline | None = None
        reservation: Reservation | None = None
        blocked = first_without_room = False
        # Within one cycle the fleet only fills up: a shape (request, workers) that found no
        # room finds none later in the cycle, and one that would delay the reservation for a
        # walltime delays it for any longer one. Remembering them spares the kernel thousands
        # of calls per cycle in a long line, and changes no decision.
        no_room: set[tuple[int, tuple[str, ...] | None, int]] = set()
        delaying: dict[tuple[int, tuple[str, ...] | None, int], float] = {}
        for index in order:
            record, request = records[index], requests[index]
            if self.config.backfill == "none" and blocked:
                break
            if self._rules.waiting_preemptor(record, self._jobs) is not None:
                blocked = True  # a victim waits until its preemptor has started
                continue
            shape = (request.gpus, request.gpu_model, record.workers)  # all a trace job asks
            length = record.config.walltime or NEVER
            if shape in no_room or length >= delaying.get(shape, NEVER + 1):
                blocked = True
                continue
            need = request.gpus * record.workers
            placed = self._place(request, record.workers) if need <= cycle.free else None
            if placed is None:
                no_room.add(shape)
                blocked = True
                if first_without_room:
                    continue
                first_without_room = True  # the job the server reserves for, and preempts for
                timeline = timeline or self._timeline(now)
                gang = self._gang(record, request)
                if self.config.backfill == "easy":
                    fit = timeline.earliest(gang)
                    if fit is not None:
                        reservation = Reservation(gang, fit.start)
                if self.config.preemption and self._preempt(cycle, index, timeline, gang):
                    return  # the next cycle, at once, places it
                continue
            rows = self._rows(placed.placements)
            if reservation is not None:
                timeline = timeline or self._timeline(now)
                if reservation.delays(timeline, record.config.walltime, rows):
                    delaying[shape] = min(length, delaying.get(shape, NEVER + 1))
                    blocked = True
                    continue
            self.fleet.set_held([k for p in placed.placements for k in p.gpu_keys], True)
            record.allocation, record.start_time = placed.placements, now
            self._held_rows[index] = rows
            self._busy_until[rows] = now + (record.config.walltime or NEVER)
            record.status = JobStatus.RUNNING
            cycle.outcomes[index].start, cycle.outcomes[index].backfilled = now, blocked
            cycle.outcomes[index].run_starts.append(now)
            cycle.free -= need
            if timeline is not None:
                timeline.occupy(rows, now + (record.config.walltime or NEVER))
            cycle.started.append(index)

    def _preempt(self, cycle: Cycle, index: int, timeline: Timeline, gang: Gang) -> bool:
        """Stop the jobs of lower priority the job of ``index`` needs, as the server does
        (``jobs/preemption.py``), and put them back in line; whether any were stopped."""
        now, preemptor, jobs = cycle.now, cycle.records[index], self._jobs
        victims = None
        if self._rules.may_preempt(preemptor, preemptor.queue, now, jobs):
            candidates = self._rules.priority_candidates(preemptor, now, jobs, self._rows)
            victims = choose_victims(timeline, gang, candidates)
        if not victims:  # the server's next cycles try again; here, the next chance's time
            cycle.wake_at = self._rules.reconsider_at(preemptor, preemptor.queue, now, jobs)
            return False
        stopped = [(int(self._jobs[v.job_id].seq), v.started) for v in victims]
        self._rules.preempting([v.job_id for v in victims], preemptor.job_id, "default", now)
        for victim, _ in stopped:
            record, outcome = cycle.records[victim], cycle.outcomes[victim]
            self._release(record)
            self.usage.charge(record, now)
            outcome.preempted += 1
            outcome.lost += now - (now if record.start_time is None else record.start_time)
            outcome.start, outcome.backfilled = None, False
            record.allocation = record.start_time = None
            record.status, record.runs = JobStatus.QUEUED, record.runs + 1
            cycle.free += self._gpus_of(record)
        cycle.preempted, cycle.preemptor = stopped, index
        return True

    def _place(self, request: GpuRequest, workers: int) -> Placed | None:
        """The policy kernel's placement of a gang, in one cluster (each alone, in id order,
        when its answer spans several, as the server retries)."""
        for candidates in ([*self.clusters], *([c] for c in self.clusters)):
            outcome = place(self.fleet, candidates, [request] * workers, self.config.policy)
            if not isinstance(outcome, Placed):
                if len(candidates) > 1:
                    return None  # a "no" over all of them is final
                continue
            if len({p.cluster_id for p in outcome.placements}) == 1:
                return outcome
        return None

    def _finish(self, record: Job, outcome: Outcome, now: float) -> None:
        self._release(record)
        record.end_time = outcome.end = now
        self.usage.charge(record, now)
        record.status = JobStatus.COMPLETED

    def _release(self, record: Job) -> None:
        """Give back the GPUs of ``record``'s run."""
        keys = [k for p in record.allocation or () for k in p.gpu_keys]
        self.fleet.set_held(keys, False)
        self._busy_until[self._held_rows.pop(int(record.seq), [])] = 0.0
        self._run_of.pop(int(record.seq), None)

    # ---------------------------------------------------------------- the pieces
    def _multifactor(self, now: float, running: list[Job]) -> Multifactor:
        fair_share: dict[str, float] = {}
        if self.config.scheduling.weights.fair_share > 0:
            lines = self._account_shares(now, running)
            fair_share = {name: line.fair_share for name, line in lines.items()}
        return Multifactor(
            self.config.scheduling,
            now=now,
            fleet_gpus=self.total_gpus,
            fair_share=fair_share,
            queue_factors={},
        )

    def _account_shares(self, now: float, running: list[Job]) -> dict[str, AccountShare]:
        usage = self.usage.usage(now, running)
        weight = self.config.scheduling.cpu_seconds_weight
        return account_shares(self._shares_of, usage, cpu_seconds_weight=weight)

    def _parts(self, now: float, running: list[Job]) -> dict[str, float]:
        """Each account's part of all usage now (decayed), for the report."""
        lines = self._account_shares(now, running)
        return {name: line.effective_usage for name, line in lines.items()}

    def _timeline(self, now: float) -> Timeline:
        """The fleet's GPUs over time: each running job's free at its start plus walltime
        (kept up to date as jobs start and end; one due already frees its GPUs now)."""
        return Timeline(self.structure, np.maximum(self._busy_until, now), now)

    def _rows(self, placements: Iterable[Placement]) -> list[int]:
        """The GPU rows of ``placements`` (each node looked up once)."""
        s, rows = self.structure, list[int]()
        for p in placements:
            node = s.node_row(p.cluster_id, p.node_id or "")
            if node is not None and p.gpus:
                start = int(s.node_gpu_start[node])
                rows.extend(start + int(g) for g in p.gpus)
        return rows

    def _gang(self, record: Job, request: GpuRequest) -> Gang:
        return Gang(
            record.job_id, tuple(self.clusters), request, record.workers, record.config.walltime
        )

    def _could_ever_fit(self, request: GpuRequest, workers: int) -> bool:
        free = np.ones(self.structure.n_gpus, dtype=bool)
        capacity = gang_capacity(self.structure, self.clusters, request, workers, free)
        return capacity.workers >= workers

    @staticmethod
    def _gpus(job: TraceJob) -> int:
        return job.gpus * job.workers

    @staticmethod
    def _gpus_of(record: Job) -> int:
        return record.config.resources.gpus * record.workers

    @staticmethod
    def _request(job: TraceJob) -> GpuRequest:
        models = None if job.gpu_model is None else (job.gpu_model,)
        return GpuRequest(gpus=job.gpus, gpu_model=models)

    @staticmethod
    def _record(index: int, job: TraceJob) -> Job:
        """The job as the admission decisions see it (built without validation: a trace may
        hold jobs larger than a submit accepts, e.g. thousands of workers)."""
        resources = WorkerResources.model_construct(gpus=job.gpus, gpu_model=job.gpu_model)
        config = JobConfig.model_construct(
            command=["trace"],
            resources=resources,
            replica_count=job.workers,
            walltime=job.walltime,
            queue="default",
        )
        return Job(
            job_id=job.job_id,
            seq=index,
            queue="default",
            name=job.job_id,
            status=JobStatus.QUEUED,
            priority=job.priority,
            config=config,
            owner=Owner(job.account, job.account, None),
            created_at=job.submit,
        )


def simulate(
    trace: list[TraceJob], fleet_docs: list[dict[str, Any]], config: SimConfig
) -> SimResult:
    """Replay ``trace`` on a fleet of ``fleet_docs`` (cluster documents) under ``config``."""
    return Simulation(fleet_docs, config).run(trace)


def synthetic_fleet(nodes: int, gpus_per_node: int, model: str = "H100") -> list[dict[str, Any]]:
    """One cluster ``sim`` of ``nodes`` nodes of ``gpus_per_node`` GPUs of ``model``."""
    node_docs = [
        {
            "id": f"n{i:05d}",
            "gpus": {"count": gpus_per_node, "gpus": [{"modelName": model, "memory": 81920}]},
            "vcpus": {"count": 96},
            "memory": 1048576,
        }
        for i in range(nodes)
    ]
    return [
        {
            "id": "sim",
            "status": "live",
            "nodes": {"count": nodes, "nodeData": node_docs},
            "config": {"scheduler": {"type": "local"}},
        }
    ]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0–1) of ``values``, nearest rank; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
