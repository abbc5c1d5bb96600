"""Job commands of ``apportion``: ``submit``, ``jobs``, ``status``, ``cancel``, ``explain``,
``logs``, ``queues`` (in the spirit of ``sbatch``/``squeue``/``scancel`` and ``ray job``)."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from apportion.cli.common import (
    Output,
    OutputOpt,
    fail,
    in_cli_words,
    listing,
    parse_duration,
    print_json,
    print_table,
    run,
)
from apportion.cli.jobspec import read_job_file
from apportion.clients.errors import ApportionClientError, InvalidRequestError, NotFoundError
from apportion.timefmt import local_moment, local_time

if TYPE_CHECKING:
    from apportion.clients.async_client import AsyncApportion
    from apportion.clients.models import Job, JobPlan

SHORT_ID = 12
"""How much of a job id the table shows; every command takes any unique prefix of 4 or more."""

ACTIVE = ("created", "queued", "scheduled", "running")


def _reason(job: Job) -> str:
    if job.status == "queued":
        words = job.reason.message if job.reason and job.reason.message else "waiting"
        code = f"({job.reason.code}) " if job.reason and job.reason.code else ""
        return f"{code}{words}"
    if job.status == "failed" and job.failed_reason:
        return job.failed_reason
    if job.status == "created":
        return "(Held) created with --hold: queue it with `apportion enqueue`"
    nodes = sorted({f"{p.get('cluster_id')}/{p.get('node_id')}" for p in job.allocation or []})
    return ",".join(nodes) if nodes else "-"


def _elapsed(job: Job) -> str:
    """How long the job has run, as squeue's TIME (``M:SS``, ``H:MM:SS``, ``D-HH:MM:SS``)."""
    if job.start_time is None:
        return "0:00"
    started = datetime.fromisoformat(job.start_time)
    ended = datetime.fromisoformat(job.end_time) if job.end_time else datetime.now(UTC)
    seconds = max(0, int((ended - started).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _start(job: Job) -> str:
    """squeue --start's START_TIME: when a waiting job is expected to start (``N/A`` without
    an estimate), when another started; in the user's local time, as squeue writes it
    (``2026-12-06T14:03:09``)."""
    moment = job.estimated_start if job.status == "queued" else job.start_time
    if moment is None:
        return "N/A" if job.status == "queued" else "-"
    return local_moment(datetime.fromisoformat(moment).timestamp())


def _gpus(job: Job) -> int:
    """GPUs of the whole job: per worker times workers."""
    per_worker = (job.config.get("resources") or {}).get("gpus") or 0
    return int(per_worker) * int(job.config.get("replica_count", 1))


def _env(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--env takes KEY=VALUE, not {pair!r}", code=2)
        out[key] = value
    return out


def submit(
    ctx: typer.Context,
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="COMMAND",
            help="The job's argv, after --; with --application, replaces its command.",
        ),
    ] = None,
    application: Annotated[
        str | None,
        typer.Option(
            help="Run a registered application, NAME:VERSION (`apportion applications list`),"
            " as it is set up for the queue."
        ),
    ] = None,
    gpus: Annotated[
        int | None, typer.Option(help="GPUs per worker (default: the queue's, else 0).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Workers, placed all at once.")] = 1,
    queue: Annotated[str | None, typer.Option(help="Queue (default: 'default').")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first.")] = 0,
    name: Annotated[str | None, typer.Option(help="Job name.")] = None,
    walltime: Annotated[
        str | None,
        typer.Option(help="How long it may run: 3600, 90m, 2h or 1:00:00 (as sbatch --time)."),
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE (repeatable).")] = None,
    gpu_model: Annotated[str | None, typer.Option(help="GPU model glob, e.g. 'H100*'.")] = None,
    chdir: Annotated[
        str | None,
        typer.Option(
            "--chdir",
            "-D",
            help="Working directory on the server's host, as sbatch -D ('.': this one); it must"
            " be under an allowed root. Default: the job's own directory.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="Like srun: show why it waits, stream its output, exit with its exit code;"
            " Ctrl-C cancels it."
        ),
    ] = False,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="A stored file (its id; `apportion files upload`) to put in the working"
            " directory first (repeatable).",
        ),
    ] = None,
    unpack: Annotated[
        list[str] | None,
        typer.Option(help="A stored .tar(.gz|.xz|.bz2) or .zip to extract there (repeatable)."),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option(
            "--output",
            help="Files to keep when it ends, as a pattern in the working directory, e.g."
            " 'results/*.csv' (repeatable; `apportion files list --job ID`).",
        ),
    ] = None,
    dependency: Annotated[
        str | None,
        typer.Option(
            "--dependency",
            "-d",
            help="Start only after other jobs, as sbatch -d: afterok:ID[:ID…], afternotok:…,"
            " afterany:…, after:…, singleton (comma-separated: all must hold).",
        ),
    ] = None,
    array: Annotated[
        str | None,
        typer.Option(
            help="One task per index, as sbatch --array: 0-999, 1,3,5, 0-20:4; %K runs at most"
            " K at once (0-999%50). Each task reads APPORTION_ARRAY_TASK_ID."
        ),
    ] = None,
    parsable: Annotated[bool, typer.Option(help="Print only the job id.")] = False,
    hold: Annotated[
        bool,
        typer.Option(
            help="Store it without queueing it (as sbatch --hold); `apportion enqueue ID`"
            " queues it."
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Submit nothing: say where the job would start now, or why it would wait"
            " (as sbatch --test-only)."
        ),
    ] = False,
) -> None:
    """Submit a job: apportion submit --gpus 1 -- python train.py; or a job file:
    apportion submit job.toml, apportion submit train.sh (with #APPORTION lines)."""
    if hold and wait:
        fail(
            "--hold and --wait together would wait for ever: queue it with `apportion"
            " enqueue` first",
            code=2,
        )
    if array is not None and (wait or hold or dry_run):
        fail(
            "--array is submitted as it is: follow it with `apportion array ID`, not with"
            " --wait, --hold or --dry-run",
            code=2,
        )
    command = command or []
    spec = read_job_file(command)
    if spec is not None:  # a flag given on the command line beats the file
        file = spec.values
        command = spec.command
        application = application or file.get("application")
        dependency = dependency or file.get("dependency")
        array = array or file.get("array")
        gpus = gpus if gpus is not None else file.get("gpus")
        workers = workers if workers != 1 else int(file.get("workers", 1))
        queue = queue or file.get("queue")
        priority = priority or int(file.get("priority", 0))
        name = name or file.get("name")
        walltime = walltime or (str(file["walltime"]) if "walltime" in file else None)
        env = [*(f"{k}={v}" for k, v in (file.get("env") or {}).items()), *(env or [])]
        gpu_model = gpu_model or file.get("gpu_model")
        chdir = chdir or file.get("working_dir")
        inputs = [*(file.get("input_files") or []), *(inputs or [])]
        unpack = [*(file.get("unpack_files") or []), *(unpack or [])]
        outputs = [*(file.get("output_files") or []), *(outputs or [])]
    if not command and application is None:
        fail("give the command to run after --, a job file, or --application", code=2)
    resources: dict[str, Any] = {"gpu_model": gpu_model} if gpu_model else {}
    seconds = None if walltime is None else parse_duration(walltime, flag="--walltime")
    where: dict[str, Any] = {} if chdir is None else {"working_dir": os.path.abspath(chdir)}
    if spec is not None and spec.values.get("labels"):
        where["labels"] = {str(k): str(v) for k, v in spec.values["labels"].items()}
    staged = [{"id": i} for i in inputs or []] + [
        {"id": i, "decompress": True} for i in unpack or []
    ]
    if staged:
        where["input_files"] = staged
    if outputs:
        where["output_files"] = list(outputs)
    if application is not None:
        where["application"] = application
    if dependency is not None:
        where["dependency"] = dependency

    options: dict[str, Any] = {
        "gpus": gpus,
        "workers": workers,
        "queue": queue,
        "priority": priority,
        "name": name,
        "walltime": seconds,
        "env": _env(env or []),
        "resources": resources,
        **where,
    }

    async def work(client: AsyncApportion) -> Job | None:
        try:
            if array is not None:
                array_job_id, tasks = await client.submit_array(command, array, **options)
                typer.echo(
                    array_job_id
                    if parsable
                    else f"Submitted array job {array_job_id} ({tasks} tasks)"
                )
                return None
            if dry_run:
                _print_plan(await client.plan(command, **options))
                return None
            if hold:
                job_id = (await client.create_job(command, **options)).job_id
            else:
                job_id = await client.submit(command, **options)
        except InvalidRequestError as exc:
            flag = _flag_of(str(exc.details.get("path") or ""))
            if flag is None:
                raise
            fail(f"{flag}: {in_cli_words(exc.message)} [{exc.code}]")
        if hold:
            typer.echo(job_id if parsable else f"Created job {job_id} (held: `apportion enqueue`)")
        else:
            typer.echo(job_id if parsable else f"Submitted job {job_id}")
        if not wait:
            return None
        try:
            return await _follow(client, job_id, notes_to_stderr=parsable)
        except asyncio.CancelledError:  # Ctrl-C: as srun does, the job goes with the command
            await client.cancel(job_id)
            typer.echo(f"apportion: interrupted: cancelled job {job_id}", err=True)
            raise

    final = run(ctx, work)
    if final is not None and final.status != "completed":
        code = final.return_code
        raise typer.Exit(code if code is not None and 0 < code < 256 else 1)


def _print_plan(plan: JobPlan) -> None:
    """``submit --dry-run``: where the job would start, worker by worker, or why it waits."""
    where = f"queue {plan.queue}, position {plan.queue_position}"
    if plan.would_start:
        typer.echo(f"The job {plan.reason.message}")
        for index, placement in enumerate(plan.allocation or []):
            gpus = ",".join(placement.get("gpus") or []) or "none"
            typer.echo(f"  worker {index}: {placement.get('node_id')} GPUs {gpus}")
    else:
        typer.echo(f"The job would wait ({where}): {plan.reason.message} [{plan.reason.code}]")
        if plan.estimated_start is not None:
            moment = datetime.fromisoformat(plan.estimated_start).timestamp()
            typer.echo(f"It is estimated to start at {local_time(moment)}.")
    typer.echo(f"Nothing was submitted (--dry-run; {where}).")


_FLAGS = {
    "body.config.working_dir": "--chdir",
    "body.config.walltime": "--walltime",
    "body.config.replica_count": "--workers",
    "body.config.resources.gpus": "--gpus",
    "body.config.resources.gpu_model": "--gpu-model",
    "body.config.resources": "--gpus, --gpu-model, --workers",  # all a job asks for per worker
    "body.config.queue": "--queue",
    "body.config.name": "--name",
    "body.config.env": "--env",
    "body.config.command": "the command after --",
    "body.config.application": "--application",
    "body.config.dependency": "--dependency",
    "body.config.array": "--array",
    "body.config.input_files": "--input/--unpack",
    "body.config.output_files": "--output",
    "body.priority": "--priority",
}


def _flag_of(path: str) -> str | None:
    """The ``submit`` flag a refused field of the submitted body came from (``body.config.env.X``
    is ``--env``), so the error names what the user typed; None when no flag sets it."""
    for prefix, flag in _FLAGS.items():
        if path == prefix or path.startswith((prefix + ".", prefix + "[")):
            return flag
    return None


async def _follow(client: AsyncApportion, job_id: str, *, notes_to_stderr: bool) -> Job:
    """``submit --wait``: say each status, and why the job waits whenever that changes; once it
    runs, stream its output to stdout until it ends; answer its final record."""
    said = None
    while True:
        job = await client.job(job_id)
        why = job.reason.message if job.status == "queued" and job.reason else None
        if (job.status, why) != said:
            note = f" (waiting: {why})" if why else ""
            typer.echo(f"{job_id}: {job.status}{note}", err=notes_to_stderr)
            said = (job.status, why)
        if job.status == "running" or job.finished:
            break
        await asyncio.sleep(0.3)
    async for chunk in client.logs(job_id, follow=True):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    job = await client.wait(job_id)
    code = "" if job.return_code is None else f" (exit code {job.return_code})"
    typer.echo(f"{job_id}: {job.status}{code}", err=notes_to_stderr)
    return job


def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only jobs of this queue.")] = None,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Finished jobs too.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw every 2 s until Ctrl-C.")
    ] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """List jobs like squeue (active ones unless --all or --state)."""

    async def work(client: AsyncApportion) -> list[Job]:
        found = await client.list_jobs(status=state, queue=queue)
        return found if all_ or state else [j for j in found if j.status in ACTIVE]

    while True:
        found = run(ctx, work)
        if watch:  # as `watch squeue`: the screen redrawn every interval until Ctrl-C
            typer.echo("\033[H\033[2J", nl=False)
            typer.echo(f"Every {WATCH_SECONDS:g} s: apportion jobs    {local_time(time.time())}")
        _jobs_table(output, found)
        if not watch:
            return
        try:
            time.sleep(WATCH_SECONDS)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


WATCH_SECONDS = 2.0


def _jobs_table(output: Output, found: list[Job]) -> None:
    listing(
        output,
        found,
        [
            "JOBID",
            "NAME",
            "USER",
            "QUEUE",
            "STATE",
            "START",
            "TIME",
            "WORKERS",
            "GPUS",
            "PRIO",
            "POS",
            "REASON/NODES",
        ],
        lambda j: [
            j.job_id[:SHORT_ID],
            j.name,
            j.user or "-",
            j.queue,
            j.status,
            _start(j),
            _elapsed(j),
            j.config.get("replica_count", 1),
            _gpus(j),
            j.priority,
            j.queue_position,
            _reason(j),
        ],
        as_json=lambda j: j.model_dump(),
    )


def status(ctx: typer.Context, job_id: str, output: OutputOpt = Output.TABLE) -> None:
    """Show one job and its status history."""

    async def work(client: AsyncApportion) -> tuple[Job, list[Any]]:
        return await client.job(job_id), await client.statuses(job_id)

    job, history = run(ctx, work)
    if output is Output.JSON:
        print_json({**job.model_dump(), "statuses": [h.model_dump() for h in history]})
        return
    fields = ["job_id", "name", "account", "user", "queue", "status", "priority"]
    fields += ["queue_position", "scheduler_job_id", "created_at", "start_time", "end_time"]
    fields += ["return_code"]
    rows: list[list[Any]] = [[f, getattr(job, f)] for f in fields]
    if job.exit_codes is not None and len(job.exit_codes) > 1:
        rows.append(["exit codes", " ".join(str(c) for c in job.exit_codes)])
    if job.cleaned:
        rows.append(["cleaned", "its working directory was removed"])
    rows.append(["reason", _reason(job)])
    config = job.config  # what was asked for: flags, a job file's keys or #APPORTION lines
    rows.append(["command", shlex.join(config.get("command") or [])])
    rows.append(["workers", config.get("replica_count", 1)])
    rows.append(["gpus per worker", (config.get("resources") or {}).get("gpus", 0)])
    for key in ("walltime", "working_dir", "env", "labels"):
        if config.get(key):
            rows.append([key, config[key]])
    print_table(rows, ["FIELD", "VALUE"])
    print_table([[h.time, h.status, h.reason] for h in history], ["TIME", "STATUS", "REASON"])


def cancel(
    ctx: typer.Context, job_ids: Annotated[list[str], typer.Argument(help="Job ids.")]
) -> None:
    """Cancel jobs (all are tried; exits 1 if any could not be cancelled)."""

    async def one(client: AsyncApportion, job_id: str) -> str:
        try:
            await client.cancel(job_id)
        except NotFoundError:  # an array's id, as scancel takes one: its every task
            await client.cancel_array(job_id)
            return f"Cancelled array job {job_id}"
        return f"Cancelled job {job_id}"

    _each(ctx, job_ids, one)


def clean(
    ctx: typer.Context, job_ids: Annotated[list[str], typer.Argument(help="Job ids.")]
) -> None:
    """Remove ended jobs' own working directories; their logs and stored outputs stay (all
    are tried; exits 1 if any could not be cleaned)."""

    async def one(client: AsyncApportion, job_id: str) -> str:
        return f"Job {job_id}: {await client.clean(job_id)}"

    _each(ctx, job_ids, one)


def array(
    ctx: typer.Context,
    array_job_id: Annotated[str, typer.Argument(help="The array's id (submit --array said it).")],
    output: OutputOpt = Output.TABLE,
) -> None:
    """An array as one job: how many tasks are in each state, then each task."""
    found = run(ctx, lambda client: client.array(array_job_id))
    if output is Output.JSON:
        print_json(found.model_dump())
        return
    states = ", ".join(f"{count} {state}" for state, count in sorted(found.states.items()))
    limit = "" if found.limit is None else f", at most {found.limit} at once"
    typer.echo(f"Array {found.array_job_id} ({found.name}, queue {found.queue}): {found.array}")
    typer.echo(f"  {found.tasks_total} tasks{limit}: {states}")
    print_table(
        [[t["task_id"], t["job_id"][:12], t["status"], t["return_code"]] for t in found.tasks],
        ["TASK", "JOBID", "STATE", "EXIT"],
    )


def enqueue(
    ctx: typer.Context, job_ids: Annotated[list[str], typer.Argument(help="Job ids.")]
) -> None:
    """Queue jobs made with submit --hold, as scontrol release does (all are tried; exits 1 if
    any could not be queued)."""

    async def one(client: AsyncApportion, job_id: str) -> str:
        return f"Queued job {(await client.submit_created(job_id)).job_id}"

    _each(ctx, job_ids, one)


def _each(
    ctx: typer.Context,
    job_ids: list[str],
    one: Callable[[AsyncApportion, str], Awaitable[str]],
) -> None:
    """``one(client, id)`` for every id, printing what it says; each failure is printed with
    its id, and the command exits 1 if there was any."""

    async def work(client: AsyncApportion) -> int:
        failures = 0
        for job_id in job_ids:
            try:
                typer.echo(await one(client, job_id))
            except ApportionClientError as exc:
                failures += 1
                typer.echo(f"apportion: {job_id}: {exc.message} [{exc.code}]", err=True)
        return failures

    if run(ctx, work):
        raise typer.Exit(1)


def explain(ctx: typer.Context, job_id: str, output: OutputOpt = Output.TABLE) -> None:
    """Why a job waits (reason and position) or where it was placed."""
    answer = run(ctx, lambda client: client.explain(job_id))
    if output is Output.JSON:
        print_json(answer)
        return
    if answer["waiting"]:
        reason = answer["reason"] or {}
        typer.echo(f"Job {job_id} is waiting: {reason.get('message') or 'no reason recorded'}")
        typer.echo(f"  reason code     {reason.get('code') or '-'}")
        typer.echo(f"  queue position  {answer['queue_position']}")
        return
    typer.echo(f"Job {job_id} is {answer['status']}.")
    for index, placement in enumerate(answer["allocation"] or []):
        gpus = ",".join(placement.get("gpus") or []) or "-"
        where = f"{placement.get('cluster_id')}/{placement.get('node_id')}"
        typer.echo(f"  worker {index}: {where} gpus {gpus}")
    if answer["failed_reason"]:
        typer.echo(f"  failed: {answer['failed_reason']}")


def logs(
    ctx: typer.Context,
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Until the job ends.")] = False,
) -> None:
    """Print a job's output (stdout and stderr together); -f follows it, a gang's every worker
    at once, each line marked with its worker's number."""

    async def work(client: AsyncApportion) -> None:
        job = await client.job(job_id)
        workers = int(job.config.get("replica_count", 1))
        if follow and workers > 1 and job.adapter != "slurm":  # Slurm: one file for the job
            await asyncio.gather(*(_follow_worker(client, job.job_id, n) for n in range(workers)))
            return
        async for chunk in client.logs(job.job_id, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    run(ctx, work)


async def _follow_worker(client: AsyncApportion, job_id: str, worker: int) -> None:
    """Print one worker's output as it comes, whole lines only, each marked ``[N] ``."""
    pending = ""
    async for chunk in client.logs(job_id, follow=True, worker=worker):
        *lines, pending = (pending + chunk).split("\n")
        for line in lines:
            sys.stdout.write(f"[{worker}] {line}\n")
        sys.stdout.flush()
    if pending:
        sys.stdout.write(f"[{worker}] {pending}\n")
        sys.stdout.flush()


def queues(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """List queues with their waiting and running jobs."""

    async def work(client: AsyncApportion) -> tuple[list[Any], dict[str, Any]]:
        return await client.queues(), await client.queue_statistics()

    found, stats = run(ctx, work)
    per_queue = stats.get("queues") or stats.get("per_queue") or {}

    def counts(name: str, key: str) -> Any:
        entry = per_queue.get(name) if isinstance(per_queue, dict) else None
        return entry.get(key) if isinstance(entry, dict) else None

    listing(
        output,
        found,
        [
            "NAME",
            "PLUGIN",
            "POLICY",
            "MAX WORKERS",
            "GPUS HELD",
            "QUOTA USED",
            "QUEUED",
            "RUNNING",
            "DESCRIPTION",
        ],
        lambda q: [
            q.name,
            q.plugin,
            q.policy_rule_uri,
            _cap((q.model_extra or {}).get("maximum_allowed_worker_instances")),
            _held_of_total(
                (counts(q.name, "resources_held") or {}).get("gpus", 0),
                ((q.model_extra or {}).get("maximum_allowed_resources") or {}).get("gpus"),
            ),
            _quota_used(counts(q.name, "quota")),
            counts(q.name, "queued"),
            counts(q.name, "running"),
            q.description,
        ],
        as_json=lambda q: q.model_dump(),
    )


def priority(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Waiting jobs in the order they are considered, with their weighted priority factors
    (as sprio)."""
    found = run(ctx, lambda client: client.priorities())
    listing(
        output,
        found,
        ["JOBID", "ACCOUNT", "QUEUE", "PRIORITY", "JOB", "AGE", "FAIRSHARE", "JOBSIZE", "QUEUEF"],
        lambda p: [
            p.job_id[:SHORT_ID],
            p.account,
            p.queue,
            f"{p.priority:g}",
            *(
                f"{p.weighted.get(k, 0.0):g}"
                for k in ("job", "age", "fair_share", "job_size", "queue")
            ),
        ],
        as_json=lambda p: p.model_dump(),
    )


SHARE_COLUMNS = ["ACCOUNT", "RAW SHARES", "NORM SHARES", "GPU-SECONDS", "CPU-SECONDS"]
SHARE_COLUMNS += ["EFFECTV USAGE", "FAIRSHARE"]  # sshare's headings


def share(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Each account's shares, decayed usage and fair-share factor (as sshare)."""
    found = run(ctx, lambda client: client.fair_share())
    listing(
        output,
        found,
        SHARE_COLUMNS,
        lambda a: [
            a.account,
            a.raw_shares,
            f"{a.norm_shares:.6f}",
            f"{a.gpu_seconds:.0f}",
            f"{a.cpu_seconds:.0f}",
            f"{a.effective_usage:.6f}",
            f"{a.fair_share:.6f}",
        ],
        as_json=lambda a: a.model_dump(),
    )


def _held_of_total(held: int, total: int | None) -> str:
    """``2 / 3``: GPUs the queue's jobs hold, of its maximum_allowed_resources (or unlimited)."""
    return f"{held} / {'unlimited' if total is None else total}"


def _quota_used(quota: Any) -> str:
    """``H100 6/4, vcpus 8/64``: what the queue's jobs use of each quota, of its nominal
    (more than nominal is borrowed from its cohort); ``-`` without a quota."""
    if not isinstance(quota, dict):
        return "-"
    parts = [f"{model} {q['used']}/{q['nominal']}" for model, q in quota.get("gpus", {}).items()]
    parts += [
        f"{n} {quota[n]['used']}/{quota[n]['nominal']}"
        for n in ("vcpus", "memory_mb")
        if n in quota
    ]
    return ", ".join(parts) or "-"


def _cap(value: Any) -> Any:
    """A queue's worker cap as people read it: -1 (the API's "no cap") is "unlimited"."""
    return "unlimited" if value in (None, -1) else value


HISTORY_FIELDS: dict[str, Callable[[Job], Any]] = {
    "jobid": lambda j: j.job_id,
    "name": lambda j: j.name,
    "account": lambda j: j.account,
    "user": lambda j: j.user,
    "queue": lambda j: j.queue,
    "state": lambda j: j.status,
    "submit": lambda j: j.created_at,
    "start": lambda j: j.start_time,
    "end": lambda j: j.end_time,
    "elapsed": lambda j: _elapsed(j) if j.start_time else None,
    "workers": lambda j: j.config.get("replica_count", 1),
    "gpus": lambda j: _gpus(j),
    "exitcode": lambda j: j.return_code,
    "reason": lambda j: j.failed_reason,
}
"""What ``history --format`` can show (sacct's field names where it has one)."""


def history(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Submitted since: a date (2026-12-01), a time, or an age (2h, 1d)."),
    ] = None,
    user: Annotated[str | None, typer.Option(help="Only this user's jobs.")] = None,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help=f"Comma-separated fields, from: {', '.join(HISTORY_FIELDS)}.",
        ),
    ] = "jobid,name,user,state,elapsed,gpus,exitcode",
    output: OutputOpt = Output.TABLE,
) -> None:
    """Finished and running jobs, as sacct shows them (every state unless --state)."""
    fields = [f.strip().lower() for f in format_.split(",") if f.strip()]
    unknown = [f for f in fields if f not in HISTORY_FIELDS]
    if unknown or not fields:
        fail(
            f"--format {format_!r}: unknown field(s) {', '.join(unknown) or '(none given)'};"
            f" choose from {', '.join(HISTORY_FIELDS)}",
            code=2,
        )
    cutoff = None if since is None else _since(since)
    found = run(ctx, lambda client: client.list_jobs(status=state))
    chosen = [
        j
        for j in found
        if (user is None or j.user == user)
        and (cutoff is None or (j.created_at and datetime.fromisoformat(j.created_at) >= cutoff))
    ]
    listing(
        output,
        chosen,
        [f.upper() for f in fields],
        lambda j: [HISTORY_FIELDS[f](j) for f in fields],
        as_json=lambda j: j.model_dump(),
    )


def _since(text: str) -> datetime:
    """``--since``: an ISO date or time (local time when it names no zone), or an age."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text, flag="--since"))
    return moment if moment.tzinfo is not None else moment.astimezone()


def register(app: typer.Typer) -> None:
    """Add the job commands to ``app``."""
    app.command(context_settings={"allow_interspersed_args": False})(submit)
    app.command()(jobs)
    app.command()(history)
    app.command()(status)
    app.command()(cancel)
    app.command()(enqueue)
    app.command()(clean)
    app.command()(array)
    app.command()(explain)
    app.command()(logs)
    app.command()(queues)
    app.command()(share)
    app.command()(priority)
