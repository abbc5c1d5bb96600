"""``apportion simulate``: a trace replayed under several configurations, compared side by
side (docs/scheduling.md, "Trying a configuration on a trace")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from apportion.cli.common import fail, print_table, server_modules


def simulate(
    trace: Annotated[
        Path, typer.Argument(help="A workload: .swf (Parallel Workloads Archive) or .csv.")
    ],
    config: Annotated[
        list[Path],
        typer.Option(
            "--config",
            "-c",
            help="A configuration (TOML: [scheduling], backfill, shares, policy); repeat to compare.",
        ),
    ],
    nodes: Annotated[int, typer.Option(min=1, help="Nodes of the simulated fleet.")] = 100,
    gpus_per_node: Annotated[int, typer.Option(min=1, help="GPUs per node.")] = 8,
    gpu_model: Annotated[str, typer.Option(help="The fleet's GPU model.")] = "H100",
    fleet: Annotated[
        Path | None,
        typer.Option(help="A JSON list of cluster documents to use instead of --nodes."),
    ] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write the plots to this HTML file.")
    ] = None,
) -> None:
    """Replay a trace through the admission decisions on a virtual clock, per configuration."""
    server_modules("simulate")
    from apportion.sim.engine import read_config, synthetic_fleet
    from apportion.sim.engine import simulate as run
    from apportion.sim.report import COLUMNS, html_report, summarize, table_row
    from apportion.sim.trace import TraceError, read_trace

    try:
        jobs = read_trace(trace, gpus_per_node=gpus_per_node)
        configs = [read_config(path) for path in config]
    except (TraceError, ValueError) as exc:
        fail(f"{exc} (check TRACE and --config)")
    docs: list[dict[str, Any]] = synthetic_fleet(nodes, gpus_per_node, gpu_model)
    if fleet is not None:
        try:
            docs = json.loads(fleet.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"--fleet {fleet}: {exc}")
    results = [run(jobs, docs, each) for each in configs]
    summaries = [summarize(result) for result in results]
    title = f"{trace.name}: {len(jobs)} jobs"
    print_table([table_row(s) for s in summaries], COLUMNS, title=title)
    for summary in summaries:
        if summary.never_fit:
            typer.echo(
                f"{summary.name}: {summary.never_fit} job(s) larger than any cluster, left out"
            )
    if html is not None:
        html.write_text(html_report(results, summaries, trace.name), encoding="utf-8")
        typer.echo(f"Plots: {html}")


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""
    app.command()(simulate)
