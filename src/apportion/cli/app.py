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

import contextlib
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from apportion import __version__
from apportion.cli import admin as cli_admin
from apportion.cli import files as cli_files
from apportion.cli import fleet as cli_fleet
from apportion.cli import jobs as cli_jobs
from apportion.cli import simulate as cli_simulate
from apportion.cli.common import GlobalOptions, command_group, server_modules

app = command_group(
    "Apportion: a policy-driven GPU allocation engine.",
    name="apportion",
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
)


def _has_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:  # not a URL at all: the settings say what is wrong with it
        return False


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
        str | None,
        typer.Option(
            help="Database URL: sqlite:///path/apportion.db (default: in the data dir) or"
            " postgresql://user@host:port/database (its password in ~/.pgpass, or the whole"
            " URL in APPORTION_DB)."
        ),
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
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO (default), WARNING or ERROR.")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text (default) or json: one object per line.")
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
    if db is not None and _has_password(db):
        typer.echo(
            "apportion: a password in --db is refused: the command line can be read by every"
            " local user (ps, /proc/<pid>/cmdline); give the URL as APPORTION_DB or as db in"
            " the --config file, or keep the password in ~/.pgpass (PGPASSFILE)",
            err=True,
        )
        raise typer.Exit(2)
    server_modules("serve")
    from apportion.cli import running  # the server's modules, only for the commands that run one

    settings = running.settings_of(
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
        log_level=log_level.upper() if log_level else None,
        log_format=log_format,
    )
    running.run_server(settings)


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
    server_modules("demo")
    from apportion.cli import running  # the server's modules, only for the commands that run one

    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="apportion-demo-"))
            )
        settings = running.settings_of(
            port=port, ws_port=ws_port, data_dir=data_dir, write_credentials=False
        )
        running.run_demo(settings, duration)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


cli_fleet.register(app)
cli_jobs.register(app)
cli_admin.register(app)
cli_files.register(app)
cli_simulate.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
