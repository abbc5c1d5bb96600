"""The commands that run a server: ``apportion serve`` and ``apportion demo``.

Imported by those two commands only, so that every other command starts without importing the
server (its store, engine and web stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

import typer
from pydantic import ValidationError

from apportion import __version__, jsonutil
from apportion.app import Server, serve_forever, settle_collector
from apportion.config import Settings
from apportion.demo import DEMO_QUEUES, DemoJobs, SyntheticMetrics, demo_clusters
from apportion.errors import ApportionError
from apportion.jobs.identity import python_for_jobs
from apportion.ownership import DEFAULT_ACCOUNT, Owner
from apportion.server.credentials import Profile, write_profile
from apportion.server.dashboard import issue_one_time_link
from apportion.timefmt import iso_utc


def settings_of(**given: Any) -> Settings:
    """The server's settings from the given flags (a flag left out passes nothing); a usage
    error naming the option otherwise."""
    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            typer.echo(
                f"apportion: invalid option {where}: {message}"
                if where
                else f"apportion: {message}",
                err=True,
            )
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        typer.echo(f"apportion: {exc}", err=True)
        raise typer.Exit(2) from None


async def _until_terminated(coro: Any) -> None:
    """Run ``coro``; SIGTERM cancels it so the server stops cleanly, as Ctrl-C does."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await coro


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``message`` and,
    for an exception, ``exc`` (``log_format = "json"``, for log collectors)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return jsonutil.dumps_str(entry)


def configure_logging(settings: Settings) -> None:
    """The server's log on stderr at ``settings.log_level``, as text or JSON lines."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)


def _run(settings: Settings, coro: Any) -> None:
    configure_logging(settings)
    try:
        asyncio.run(_until_terminated(coro))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as exc:
        typer.echo(f"apportion: {exc}", err=True)
        raise typer.Exit(1) from None


def run_server(settings: Settings) -> None:
    """``apportion serve``: run until SIGTERM or Ctrl-C."""
    _run(settings, serve_forever(settings))


def run_demo(settings: Settings, duration: float) -> None:
    """``apportion demo``: a server with the demo fleet, for ``duration`` seconds (0: until
    SIGTERM or Ctrl-C)."""
    _run(settings, _demo(settings, duration))


DEMO_PROFILE = "demo"
"""The credentials-file profile ``apportion demo`` writes its URLs and key to, each run."""


async def _demo(settings: Settings, duration: float) -> None:
    server = Server(settings)
    await server.start()
    settle_collector()
    try:
        assert server.context is not None and server.bootstrap_key is not None
        registry = server.context.registry
        clusters = demo_clusters()
        for doc in clusters:
            await registry.upsert_cluster(doc)
        metrics = SyntheticMetrics(clusters, registry.fleet, registry.put_metrics)
        jobs = server.context.jobs
        assert jobs is not None
        for queue in DEMO_QUEUES:
            if queue["name"] not in jobs.queues.names():
                await jobs.queues.create(queue)
        demo_owner = Owner(DEFAULT_ACCOUNT, None, None)  # the server's own: admins change them
        stream = DemoJobs(lambda body: jobs.submit(body, demo_owner), python=python_for_jobs())
        tasks = [
            asyncio.create_task(metrics.run(), name="demo-metrics"),
            asyncio.create_task(stream.run(), name="demo-jobs"),
        ]
        key = server.bootstrap_key.secret
        saved = write_profile(  # the demo's own profile, rewritten by each run: exports last
            DEMO_PROFILE, Profile(url=server.url, ws_url=server.ws_url, api_key=key)
        )
        gpus = sum(n["gpus"]["count"] for c in clusters for n in c["nodes"]["nodeData"])
        nodes = sum(len(c["nodes"]["nodeData"]) for c in clusters)
        print(
            f"\nApportion {__version__} demo: {len(clusters)} clusters, {nodes} nodes, {gpus} GPUs"
        )
        print(
            f"  REST API            {server.url}   (try: curl -H 'Authorization: Bearer {key}' {server.url}/clusters)"
        )
        print(f"  dashboard           {issue_one_time_link(server.url)}   (one-time sign-in link)")
        print(f"  allocation socket   {server.ws_url}")
        print(f"  admin key           {key}")
        print(
            f"  CLI and client      export APPORTION_PROFILE={DEMO_PROFILE}   (saved to {saved};"
            " then: .venv/bin/apportion jobs)"
        )
        print(f"  data dir            {settings.data_dir}")
        print("  demo jobs           a new one every 2 s in queues 'training' and 'inference'")
        print(
            f"                      (watch: curl -H 'Authorization: Bearer {key}' {server.url}/jobs)"
        )
        answer = await _sample_allocation(server.ws_url, key)
        print("  sample request      topology:1.0-stable, 4 × H100 inside one NVLink domain")
        print(f"  answer              {jsonutil.dumps_str(answer)}\n")
        sys.stdout.flush()
        try:
            if duration > 0:
                await asyncio.sleep(duration)
            else:
                await asyncio.Event().wait()
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # nothing outlives the demo: its jobs still waiting or running are cancelled (a
            # local job's executor would otherwise run it on after the demo ended)
            for job in [j for j in jobs.jobs.jobs.values() if not j.status.finished]:
                with contextlib.suppress(ApportionError):
                    await jobs.cancel(job.job_id)
    finally:
        await server.stop()


async def _sample_allocation(ws_url: str, key: str) -> Any:
    from websockets.asyncio.client import connect

    request = {
        "adhoc": True,
        "policy_rule_uri": "topology:1.0-stable",
        "clusters": [],
        "inputs": {"gpus": 4, "gpu_model": "H100", "nvlink": True},
        "filter": {},
        "search": {},
        "parameters": {},
        "settings": {},
        "request_id": "demo-1",
    }
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        await ws.send(jsonutil.dumps_str(request))
        return jsonutil.loads(await ws.recv())
