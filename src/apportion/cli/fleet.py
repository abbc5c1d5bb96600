"""Fleet commands of ``apportion``: ``allocate``, ``hold``, ``release``, ``allocations``,
``clusters list|show|load|export``, ``nodes`` and ``events``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from apportion.cli.common import (
    Output,
    OutputOpt,
    command_group,
    fail,
    listing,
    parse_duration,
    print_json,
    print_table,
    read_json,
    run,
)
from apportion.clients.config import DEFAULT_POLICY
from apportion.timefmt import local_time

if TYPE_CHECKING:
    from apportion.clients.async_client import AsyncApportion
    from apportion.clients.models import AllocationResult, Cluster, Event

clusters_app = command_group("Clusters of the registry.")


def allocate(
    ctx: typer.Context,
    gpus: Annotated[int | None, typer.Option(help="GPUs to place.")] = None,
    gpu_model: Annotated[str | None, typer.Option(help="GPU model glob, e.g. 'H100'.")] = None,
    gpu_memory_mb: Annotated[int | None, typer.Option(help="Minimum memory per GPU.")] = None,
    nvlink: Annotated[bool, typer.Option(help="Inside one NVLink domain.")] = False,
    policy: Annotated[str, typer.Option(help="Policy URI.")] = DEFAULT_POLICY,
    cluster: Annotated[list[str] | None, typer.Option(help="Candidate cluster (repeat).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A whole request as JSON (seed 004).")
    ] = None,
    explain: Annotated[bool, typer.Option(help="Show the decision record.")] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Ask where a request should go (nothing is held)."""
    if file is not None:
        body = read_json(str(file), f"--file {file}")
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
            fail(f"--file {file} must hold a request object with 'inputs'", code=2)
        inputs: dict[str, Any] = body["inputs"]
        policy = body.get("policy_rule_uri", policy)
        cluster = body.get("clusters") or cluster
        explain = bool(body.get("explain", explain))
        extra = {k: body[k] for k in ("filter", "search", "parameters", "settings") if body.get(k)}
    else:
        inputs = _inputs(gpus, gpu_model, gpu_memory_mb, nvlink)
        extra = {}

    async def work(client: AsyncApportion) -> AllocationResult:
        return await client.allocate(
            inputs, policy=policy, clusters=cluster, explain=explain, **extra
        )

    result = run(ctx, work)
    if output is Output.JSON:
        print_json(result.model_dump(exclude_none=True))
        return
    rows = [[p.cluster_id, p.node_id, ",".join(p.gpus)] for p in result.placements]
    print_table(rows, ["CLUSTER", "NODE", "GPUS"])
    if result.explain:
        typer.echo(explain_summary(result.explain))


def explain_summary(record: dict[str, Any], *, examples: int = 3) -> str:
    """A decision record (``explain``) in a few lines: how many candidates, why the others
    were refused (counted by reason, with a few examples), the best scores and the time spent.
    The whole record is ``-o json``'s."""
    policy, clusters = record.get("policy_rule_uri"), record.get("candidate_clusters")
    lines = [f"Decided by {policy} over {clusters} cluster(s)"]
    if record.get("candidate_nodes") is not None:
        lines.append(
            f"  {record.get('feasible_nodes')} of {record['candidate_nodes']} candidate nodes"
            " could take it"
        )
        summary = record.get("rejection_summary") or {}
        if summary:
            counted = ", ".join(f"{reason}: {n}" for reason, n in summary.items())
            lines.append(f"  refused because of {counted}")
        for rejected in (record.get("rejected") or [])[:examples]:
            reasons = "; ".join(rejected.get("reasons") or [])
            lines.append(f"    {rejected.get('cluster_id')}/{rejected.get('node_id')}: {reasons}")
        more = len(record.get("rejected") or []) - examples
        if more > 0:
            lines.append(f"    … and {more} more (-o json for all)")
        scores = record.get("top_scores") or []
        if scores:
            best = ", ".join(
                f"{s.get('cluster_id')}/{s.get('node_id')} ({s.get('score')})" for s in scores[:3]
            )
            lines.append(f"  best: {best}")
    timings = record.get("timings_ms") or {}
    if timings:
        spent = ", ".join(f"{phase} {ms:.2f} ms" for phase, ms in timings.items())
        lines.append(f"  time: {spent}")
    return "\n".join(lines)


def _inputs(
    gpus: int | None, gpu_model: str | None, gpu_memory_mb: int | None, nvlink: bool
) -> dict[str, Any]:
    """A request's ``inputs`` from the flags ``allocate`` and ``hold`` share."""
    inputs: dict[str, Any] = {"gpus": 1 if gpus is None else gpus}
    if gpu_model:
        inputs["gpu_model"] = gpu_model
    if gpu_memory_mb:
        inputs["gpu_memory_mb"] = gpu_memory_mb
    if nvlink:
        inputs["nvlink"] = True
    return inputs


def hold(
    ctx: typer.Context,
    gpus: Annotated[int | None, typer.Option(help="GPUs to hold.")] = None,
    gpu_model: Annotated[str | None, typer.Option(help="GPU model glob, e.g. 'H100'.")] = None,
    gpu_memory_mb: Annotated[int | None, typer.Option(help="Minimum memory per GPU.")] = None,
    nvlink: Annotated[bool, typer.Option(help="Inside one NVLink domain.")] = False,
    policy: Annotated[str, typer.Option(help="Policy URI.")] = DEFAULT_POLICY,
    cluster: Annotated[list[str] | None, typer.Option(help="Candidate cluster (repeat).")] = None,
    lease: Annotated[
        str | None, typer.Option(help="How long to hold them: 600, 30m, 2h, 1:00:00.")
    ] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Hold GPUs under a lease, as salloc does; they stay held after this command ends, until
    `apportion release ID` or the lease's end."""
    inputs = _inputs(gpus, gpu_model, gpu_memory_mb, nvlink)
    seconds = None if lease is None else parse_duration(lease, flag="--lease")

    async def work(client: AsyncApportion) -> AllocationResult:
        return await client.reserve(inputs, policy=policy, clusters=cluster, lease_seconds=seconds)

    result = run(ctx, work)
    if output is Output.JSON:
        print_json(result.model_dump(exclude_none=True))
        return
    until = _when(result.expires_at)
    typer.echo(f"Holding allocation {result.allocation_id} until {until}")
    rows = [[p.cluster_id, p.node_id, ",".join(p.gpus)] for p in result.placements]
    print_table(rows, ["CLUSTER", "NODE", "GPUS"])


def release(
    ctx: typer.Context,
    allocation_ids: Annotated[list[str], typer.Argument(help="Allocation ids.")],
) -> None:
    """Release held GPUs now."""

    async def work(client: AsyncApportion) -> None:
        for allocation_id in allocation_ids:
            await client.release(allocation_id)
            typer.echo(f"Released allocation {allocation_id}")

    run(ctx, work)


def allocations(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Held GPUs (yours and your account's; an operator or admin key: everyone's)."""
    found = run(ctx, lambda client: client.allocations())
    listing(
        output,
        found,
        ["ALLOCATION", "USER", "KIND", "PLACEMENTS", "UNTIL"],
        lambda h: [
            h["allocation_id"],
            h.get("user") or "-",
            h.get("kind"),
            "; ".join(
                f"{p.get('cluster_id')}/{p.get('node_id')} [{','.join(p.get('gpus') or [])}]"
                for p in h.get("placements") or []
            ),
            _when(h.get("expires_at")),
        ],
    )


def _when(epoch: float | None) -> str:
    """A lease's end as local time (``-`` when unknown)."""
    return "-" if epoch is None else local_time(epoch)


@clusters_app.command("list")
def clusters_list(ctx: typer.Context, output: OutputOpt = Output.TABLE) -> None:
    """Every cluster."""
    found = run(ctx, lambda client: client.clusters())
    listing(
        output,
        found,
        ["ID", "STATUS", "REGION", "NODES", "GPUS", "SCHEDULER"],
        lambda c: [
            c.id,
            c.status,
            c.regionId,
            len(c.node_list()),
            c.gpus.get("count"),
            ((c.model_extra or {}).get("config") or {}).get("scheduler", {}).get("type"),
        ],
        as_json=lambda c: c.model_dump(exclude_none=True),
    )


@clusters_app.command("show")
def clusters_show(ctx: typer.Context, cluster_id: str) -> None:
    """One cluster document (JSON)."""
    print_json(run(ctx, lambda client: client.cluster(cluster_id)).model_dump(exclude_none=True))


@clusters_app.command("load")
def clusters_load(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A document, a list, or an export snapshot.")],
) -> None:
    """Register (or replace) clusters from a JSON file; metrics of a snapshot are pushed."""
    body = read_json(str(file), str(file))
    metrics: dict[str, Any] = {}
    if isinstance(body, dict) and isinstance(body.get("clusters"), list):
        docs, metrics = body["clusters"], body.get("metrics") or {}
    else:
        docs = body if isinstance(body, list) else [body]
    if not all(isinstance(d, dict) for d in docs):
        fail(f"{file} must hold cluster documents (objects)", code=2)

    async def work(client: AsyncApportion) -> None:
        for doc in docs:
            stored = await client.register_cluster(doc, replace=True)
            typer.echo(f"Registered cluster {stored.id} ({len(stored.node_list())} nodes)")
        for cluster_id, doc in metrics.items():
            clean = {k: v for k, v in doc.items() if k != "stale"}
            await client.push_metrics(cluster_id, clean)
            typer.echo(f"Pushed metrics of {cluster_id}")

    run(ctx, work)


@clusters_app.command("export")
def clusters_export(
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Write here, not stdout.")
    ] = None,
) -> None:
    """Write a snapshot {"clusters", "metrics"} for `apportion policies test`."""
    snapshot = run(ctx, lambda client: client.export_snapshot())
    if file is None:
        print_json(snapshot)
    else:
        import orjson

        file.write_bytes(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2))
        typer.echo(f"Wrote {len(snapshot['clusters'])} clusters to {file}")


def nodes(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option(help="Only this cluster.")] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Every node with its GPUs."""

    async def work(client: AsyncApportion) -> tuple[list[Cluster], dict[str, Any]]:
        docs = [await client.cluster(cluster)] if cluster else await client.clusters()
        return docs, await client.fleet()

    docs, snapshot = run(ctx, work)
    taken = _taken_gpus(snapshot)
    rows: list[dict[str, Any]] = []
    for doc in docs:
        for node in doc.node_list():
            node_gpus = node.get("gpus") or {}
            count = int(node_gpus.get("count", 0))
            used = taken.get((doc.id, str(node.get("id"))), 0)
            rows.append(
                {
                    "cluster_id": doc.id,
                    "node_id": node.get("id"),
                    "state": _node_state(doc.status, used, count),
                    "gpus": count,
                    "free": count - used,
                    "models": ",".join(node_gpus.get("modelNames") or []) or None,
                    "vcpus": (node.get("vcpus") or {}).get("count"),
                    "memory_mb": node.get("memory"),
                }
            )
    listing(
        output,
        rows,
        ["CLUSTER", "NODE", "STATE", "GPUS", "FREE", "MODELS", "VCPUS", "MEMORY_MB"],
        lambda r: list(r.values()),
    )


def _taken_gpus(snapshot: dict[str, Any]) -> dict[tuple[str, str], int]:
    """GPUs held by an allocation or a job, per ``(cluster, node)``, from ``GET /fleet``."""
    state = snapshot["gpu_fields"].index("state")
    return {
        (cluster["id"], node["id"]): sum(1 for g in node["gpus"] if g[state] in ("held", "job"))
        for cluster in snapshot["clusters"]
        for node in cluster["nodes"]
    }


def _node_state(cluster_status: str | None, taken: int, gpus: int) -> str:
    """A node's state as sinfo names it: ``drain`` (its cluster is not live), ``idle``
    (nothing held), ``alloc`` (every GPU held), else ``mix``."""
    if cluster_status not in (None, "live"):
        return "drain"
    if taken == 0:
        return "idle"
    return "alloc" if taken >= gpus else "mix"


def events(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing live events.")
    ] = False,
    since: Annotated[int, typer.Option(help="Start after this seq.")] = 0,
    type_: Annotated[
        list[str] | None, typer.Option("--type", help="Only this type (repeat).")
    ] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Stored events after --since; with --follow, then live ones (resuming after drops)."""
    types = set(type_ or []) or None

    def show(event: Event) -> None:
        if output is Output.JSON:
            typer.echo(event.model_dump_json())
        else:
            payload = " ".join(f"{k}={v}" for k, v in event.payload.items() if k != "type")
            typer.echo(f"{event.seq:>6} {event.ts} {event.type:<20} {payload}")

    async def work(client: AsyncApportion) -> None:
        last = since
        async for event in client.event_history(since, types=types):
            show(event)
            last = event.seq
        if follow:
            async with client.events(since=last, types=types) as stream:
                async for event in stream:
                    show(event)

    try:
        run(ctx, work)
    except asyncio.CancelledError:
        raise typer.Exit(130) from None


def register(app: typer.Typer) -> None:
    """Add the fleet commands to ``app``."""
    app.command()(allocate)
    app.command()(hold)
    app.command()(release)
    app.command()(allocations)
    app.add_typer(clusters_app, name="clusters")
    app.command()(nodes)
    app.command()(events)
