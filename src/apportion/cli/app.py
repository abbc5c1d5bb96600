"""The ``apportion`` command line (typer).

``apportion serve`` runs the server; ``apportion demo`` runs it with a demo
fleet and live synthetic metrics and shows an allocation. Options follow
CONTRACTS §1: a flag beats ``APPORTION_*`` in the environment, which beats the
config file, which beats the default — so a flag left out passes nothing.

The client commands (``allocate``, ``submit``, ``jobs``, ``clusters``, ``policies``, …) live
in ``jobs.py``, ``fleet.py`` and ``admin.py``; they take the global options ``--url``,
``--ws-url``, ``--api-key`` and ``--profile`` before the command (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from apportion import __version__, jsonutil
from apportion.app import Server, serve_forever
from apportion.cli import admin as cli_admin
from apportion.cli import fleet as cli_fleet
from apportion.cli import jobs as cli_jobs
from apportion.cli.common import GlobalOptions
from apportion.config import Settings
from apportion.demo import DEMO_QUEUES, DemoJobs, SyntheticMetrics, demo_clusters
from apportion.jobs.identity import python_for_jobs
from apportion.ownership import DEFAULT_ACCOUNT, Owner
from apportion.server.credentials import Profile, write_profile
from apportion.server.dashboard import issue_one_time_link

app = typer.Typer(
    name="apportion",
    help="Apportion: a policy-driven GPU allocation engine.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option(help="Server HTTP URL (or APPORTION_URL; default from profile).")
    ] = None,
    ws_url: Annotated[
        str | None, typer.Option(help="Allocation WebSocket URL (or APPORTION_WS_URL).")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key (or APPORTION_API_KEY).")] = None,
    profile: Annotated[
        str | None, typer.Option(help="Credentials-file profile (default 'default').")
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Apportion: a policy-driven GPU allocation engine."""
    ctx.obj = GlobalOptions(url=url, ws_url=ws_url, api_key=api_key, profile=profile)


def _settings(**given: Any) -> Settings:
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


def _run(coro: Any) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_until_terminated(coro))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as exc:
        typer.echo(f"apportion: {exc}", err=True)
        raise typer.Exit(1) from None


HostOpt = Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")]
PortOpt = Annotated[
    int | None, typer.Option(help="HTTP port: REST, Socket.IO, dashboard (default 8080).")
]
WsPortOpt = Annotated[int | None, typer.Option(help="Allocation WebSocket port (default 8765).")]
DataDirOpt = Annotated[Path | None, typer.Option(help="Where the database and policy code live.")]


@app.command()
def serve(
    host: HostOpt = None,
    port: PortOpt = None,
    ws_port: WsPortOpt = None,
    db: Annotated[
        str | None, typer.Option(help="Database URL, e.g. sqlite:///path/apportion.db.")
    ] = None,
    data_dir: DataDirOpt = None,
    config: Annotated[Path | None, typer.Option(help="TOML config file.")] = None,
    policy_dir: Annotated[
        Path | None, typer.Option(help="Operator-trusted policies, hot-reloaded.")
    ] = None,
    policy_timeout: Annotated[
        float | None, typer.Option(help="Seconds a policy may run (default 10).")
    ] = None,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            help="A file (chmod 600) whose one line becomes an admin key; or APPORTION_ADMIN_KEY."
        ),
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option(hidden=True, help="Refused: it would show the key in ps.")
    ] = None,
    auth: Annotated[
        bool | None, typer.Option("--auth/--no-auth", help="Require API keys (default on).")
    ] = None,
    local_cluster: Annotated[
        bool | None,
        typer.Option("--local-cluster", help="Register this machine as cluster 'local'."),
    ] = None,
) -> None:
    """Run the Apportion server."""
    if admin_key is not None:
        typer.echo(
            "apportion: --admin-key is refused: a key on the command line can be read by every"
            " local user (ps, /proc/<pid>/cmdline); give it as APPORTION_ADMIN_KEY or in a file"
            " with --admin-key-file FILE (chmod 600 FILE)",
            err=True,
        )
        raise typer.Exit(2)
    settings = _settings(
        host=host,
        port=port,
        ws_port=ws_port,
        db=db,
        data_dir=data_dir,
        config=config,
        policy_dir=policy_dir,
        policy_timeout=policy_timeout,
        admin_key_file=admin_key_file,
        auth=auth,
        local_cluster=local_cluster,
    )
    _run(serve_forever(settings))


@app.command()
def demo(
    port: PortOpt = None,
    ws_port: WsPortOpt = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Demo data dir (default: a new temporary one).")
    ] = None,
    duration: Annotated[
        float, typer.Option(help="Stop after this many seconds (0: run until Ctrl-C).")
    ] = 0.0,
) -> None:
    """Run a server with a demo fleet (3 clusters, 44 nodes × 8 GPUs) and live synthetic metrics."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="apportion-demo-"))
            )
        settings = _settings(port=port, ws_port=ws_port, data_dir=data_dir, write_credentials=False)
        _run(_demo(settings, duration))


DEMO_PROFILE = "demo"
"""The credentials-file profile ``apportion demo`` writes its URLs and key to, each run."""


async def _demo(settings: Settings, duration: float) -> None:
    server = Server(settings)
    await server.start()
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


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


cli_fleet.register(app)
cli_jobs.register(app)
cli_admin.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
