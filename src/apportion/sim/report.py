"""What the simulator reports per configuration: waits, bounded slowdown, GPU utilisation,
fairness between accounts and backfilled jobs — a table, and an HTML page of plots (SVG drawn
here: no plotting library for two kinds of line chart).

* wait: a job's start minus its submit; mean and 95th percentile;
* bounded slowdown: mean over jobs of ``max(1, (wait + run) / max(run, 10 s))``;
* utilisation: GPU-seconds run (preempted runs included) over the fleet's GPUs × the span
  from the first submit to the last end;
* Jain's fairness index over accounts of ``used / share`` (GPU-seconds run, preempted runs
  included,
  over the account's normalised shares): 1 when every account got its share, 1/n when one got
  all;
* backfilled: jobs started while a job before them in line waited;
* preempted: runs stopped by a job of higher priority (each was started again).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from dataclasses import dataclass

from apportion.sim.engine import Outcome, SimResult, percentile

BOUND_SECONDS = 10.0  # bounded slowdown's floor on the run time


@dataclass(frozen=True)
class Summary:
    """One configuration's figures (see the module's docstring)."""

    name: str
    jobs: int
    started: int
    mean_wait: float
    p95_wait: float
    bounded_slowdown: float
    utilisation: float
    fairness: float
    backfilled: int
    preempted: int
    never_fit: int


def summarize(result: SimResult) -> Summary:
    """The figures of one run."""
    ran = [o for o in result.outcomes if o.start is not None and o.end is not None]
    waits = [o.wait for o in ran if o.wait is not None]
    slowdowns = [max(1.0, ((o.wait or 0.0) + o.ran) / max(o.ran, BOUND_SECONDS)) for o in ran]
    first = min((o.job.submit for o in result.outcomes), default=0.0)
    last = max((o.end for o in ran if o.end is not None), default=first)
    used = sum(_gpu_seconds(o) for o in ran)
    span = max(last - first, 1e-9)
    return Summary(
        name=result.config.name,
        jobs=len(result.outcomes),
        started=len(ran),
        mean_wait=sum(waits) / len(waits) if waits else math.nan,
        p95_wait=percentile(waits, 0.95),
        bounded_slowdown=sum(slowdowns) / len(slowdowns) if slowdowns else math.nan,
        utilisation=used / (result.total_gpus * span) if result.total_gpus else 0.0,
        fairness=fairness(result),
        backfilled=sum(o.backfilled for o in ran),
        preempted=sum(o.preempted for o in result.outcomes),
        never_fit=result.never_fit,
    )


def fairness(result: SimResult) -> float:
    """Jain's index over accounts of GPU-seconds used over their normalised shares."""
    used: dict[str, float] = defaultdict(float)
    for o in result.outcomes:
        used[o.job.account] += _gpu_seconds(o)
    if not used:
        return math.nan
    shares = {a: result.config.shares.get(a, 1) for a in used}
    total_shares = sum(shares.values())
    ratios = [used[a] / (shares[a] / total_shares) for a in used]
    squares = sum(x * x for x in ratios)
    return (sum(ratios) ** 2) / (len(ratios) * squares) if squares else 1.0


def _gpu_seconds(outcome: Outcome) -> float:
    """What ``outcome``'s job ran, its preempted runs included, in GPU-seconds."""
    return (outcome.ran + outcome.lost) * outcome.job.gpus * outcome.job.workers


COLUMNS = [
    "CONFIG",
    "JOBS",
    "MEAN WAIT",
    "P95 WAIT",
    "SLOWDOWN",
    "GPU UTIL",
    "FAIRNESS",
    "BACKFILLED",
    "PREEMPTED",
]


def table_row(summary: Summary) -> list[str]:
    """One line of the terminal table."""
    return [
        summary.name,
        f"{summary.started}/{summary.jobs}",
        _duration(summary.mean_wait),
        _duration(summary.p95_wait),
        f"{summary.bounded_slowdown:.2f}",
        f"{summary.utilisation:.1%}",
        f"{summary.fairness:.3f}",
        str(summary.backfilled),
        str(summary.preempted),
    ]


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------- the HTML page
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
WIDTH, HEIGHT, PAD = 640, 300, 48


def html_report(results: list[SimResult], summaries: list[Summary], trace_name: str) -> str:
    """A self-contained page: the table, the waits of each configuration (a CDF), and each
    account's part of the usage over time under each configuration."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in table_row(s)) + "</tr>"
        for s in summaries
    )
    cdf = _chart(
        "Waiting time (CDF): the share of jobs that waited at most x hours",
        [
            (
                result.config.name,
                _cdf(
                    sorted((o.wait or 0.0) / 3600 for o in result.outcomes if o.start is not None)
                ),
            )
            for result in results
        ],
        x_label="hours waited",
        y_label="jobs",
    )
    shares = "".join(_share_chart(result) for result in results)
    return (
        "<!doctype html><meta charset=utf-8><title>apportion simulate</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>"
        f"<h1>apportion simulate: {html.escape(trace_name)}</h1>"
        f"<table><tr>{head}</tr>{body}</table>{cdf}{shares}"
    )


def _cdf(values: list[float]) -> list[tuple[float, float]]:
    n = len(values)
    step = max(1, n // 400)
    return [(v, (i + 1) / n) for i, v in enumerate(values) if i % step == 0 or i == n - 1]


def _share_chart(result: SimResult) -> str:
    accounts = sorted({a for _, parts in result.share_samples for a in parts})
    first = result.share_samples[0][0] if result.share_samples else 0.0
    series = [
        (
            account,
            [((t - first) / 3600, parts.get(account, 0.0)) for t, parts in result.share_samples],
        )
        for account in accounts[: len(COLOURS)]
    ]
    return _chart(
        f"{result.config.name}: each account's part of the (decayed) usage over time",
        series,
        x_label="hours",
        y_label="part",
    )


def _chart(
    title: str, series: list[tuple[str, list[tuple[float, float]]]], *, x_label: str, y_label: str
) -> str:
    """A line chart as inline SVG, y from 0 to 1."""
    xs = [x for _, points in series for x, _ in points]
    top = max(xs, default=1.0) or 1.0

    def at(x: float, y: float) -> str:
        return (
            f"{PAD + x / top * (WIDTH - 2 * PAD):.1f},{HEIGHT - PAD - y * (HEIGHT - 2 * PAD):.1f}"
        )

    lines = []
    for index, (name, points) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        path = " ".join(at(x, y) for x, y in points)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        lines.append(
            f'<text x="{WIDTH - PAD + 4}" y="{PAD + 16 * index}" fill="{colour}" '
            f'font-size="12">{html.escape(name)}</text>'
        )
    axes = (
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#000"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#000"/>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" font-size="12">{html.escape(x_label)} (0–{top:.3g})</text>'
        f'<text x="4" y="{PAD - 8}" font-size="12">{html.escape(y_label)} (0–1)</text>'
    )
    return (
        f"<h2>{html.escape(title)}</h2>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 120}" height="{HEIGHT}">'
        f"{axes}{''.join(lines)}</svg>"
    )
