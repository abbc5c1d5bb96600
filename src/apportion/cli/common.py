"""Shared plumbing of the client commands of ``apportion``: global options, running a
coroutine against the server with one error boundary, and table/JSON output.

Exit codes: 0 success; 1 the server refused or failed (its message is printed) or could not be
reached (the message names the URL); 2 usage errors (typer's, and bad local input files).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from apportion import jsonutil
from apportion.clients.config import ClientConfig, resolve_config
from apportion.clients.errors import ApportionClientError, ServerUnreachableError
from apportion.errors import ApportionError

if TYPE_CHECKING:  # the client (aiohttp, pydantic) is imported when a command calls a server
    from apportion.clients.async_client import AsyncApportion

T = TypeVar("T")


def command_group(help_text: str, **settings: Any) -> typer.Typer:
    """A typer app (the root or a group of subcommands) as all of ``apportion``'s are made.

    Help is click's plain layout, as sbatch's and git's: typer's rich layout shows a ``<bool>``
    value after every on/off flag (typer 0.29), which a flag does not take. ``-h`` is ``--help``.
    """
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
        **settings,
    )


class Output(StrEnum):
    """How listings print: a rich table, or JSON (for scripts)."""

    TABLE = "table"
    JSON = "json"


OutputOpt = Annotated[
    Output, typer.Option("--output", "-o", help="table (default) or json.", case_sensitive=False)
]


@dataclass
class GlobalOptions:
    """The global options (``apportion --url … COMMAND``), kept in the typer context."""

    url: str | None = None
    ws_url: str | None = None
    api_key: str | None = None
    profile: str | None = None

    def config(self) -> ClientConfig:
        """The resolved configuration; a malformed URL or credentials file exits 2."""
        try:
            return resolve_config(
                url=self.url, ws_url=self.ws_url, api_key=self.api_key, profile=self.profile
            )
        except ApportionClientError as exc:
            fail(exc.message, code=2)


def options(ctx: typer.Context) -> GlobalOptions:
    """The global options of this invocation (defaults when the callback did not run)."""
    root = ctx.find_root()
    if not isinstance(root.obj, GlobalOptions):
        root.obj = GlobalOptions()
    return root.obj


def console(*, err: bool = False) -> Console:
    """A console on the current stdout/stderr; wide when not a terminal (pipes, tests)."""
    stream = sys.stderr if err else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 200, highlight=False)


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print ``apportion: message`` on stderr and exit with ``code``."""
    typer.echo(f"apportion: {message}", err=True)
    raise typer.Exit(code)


CLI_WORDS = (
    ("list jobs with GET /jobs", "list them with `apportion jobs --all`"),
    ("list queues with GET /queues", "list them with `apportion queues`"),
    ("list clusters with GET /clusters", "list them with `apportion clusters list`"),
    ("list them with GET /policies", "list them with `apportion policies list`"),
    (
        "list accounts with GET /accounts (`apportion accounts list`)",
        "list them with `apportion accounts list`",
    ),
    ("list keys with GET /keys", "list them with `apportion keys list`"),
    ("list files with GET /files", "list them with `apportion files list`"),
    ("(DELETE /files/{id})", "(`apportion files delete`)"),
    ("upload it first (POST /files)", "upload it first with `apportion files upload`"),
    ("create it first with POST /accounts", "create it first with `apportion accounts create`"),
    (
        "send Authorization: Bearer <key>",
        "give a key with --api-key, APPORTION_API_KEY or a credentials profile",
    ),
    ("check the server URL you gave", "check --url"),
)
"""The server's and the client's hints, as a user of this command line says them."""


def describe(exc: ApportionClientError | ApportionError) -> str:
    """The server's message in the command line's words (:data:`CLI_WORDS`), with the field
    path and the code."""
    code = exc.code if isinstance(exc, ApportionClientError) else exc.code.value
    path = exc.details.get("path")
    where = f" (at {path})" if path else ""
    return f"{in_cli_words(exc.message)}{where} [{code}]"


def in_cli_words(message: str) -> str:
    """``message`` with the server's and the client's hints said as this CLI's
    (:data:`CLI_WORDS`)."""
    for said, meant in CLI_WORDS:
        message = message.replace(said, meant)
    return message


def run(ctx: typer.Context, work: Callable[[AsyncApportion], Awaitable[T]]) -> T:
    """Run ``work(client)`` in a fresh event loop; every client error becomes a message on
    stderr and exit code 1 (the one error boundary of the client commands)."""
    from apportion.clients.async_client import AsyncApportion

    config = options(ctx).config()

    async def main() -> T:
        async with AsyncApportion(config=config) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except ServerUnreachableError as exc:
        fail(in_cli_words(exc.message))
    except ApportionClientError as exc:
        fail(describe(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def read_json(text_or_path: str, what: str) -> Any:
    """``text_or_path`` as JSON: inline JSON, ``@file`` or a path to an existing file.
    Exits 2 naming ``what`` when it is not JSON."""
    source = text_or_path
    if source.startswith("@"):
        source = source[1:]
    try:
        path = Path(source)
        raw = path.read_bytes() if path.is_file() else text_or_path.encode()
    except OSError:
        raw = text_or_path.encode()
    try:
        return jsonutil.loads(raw)
    except ApportionError as exc:
        fail(f"{what} is not valid JSON: {exc.message}", code=2)


def print_json(value: Any) -> None:
    """Pretty JSON on stdout."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    typer.echo(text)


def print_table(
    rows: Sequence[Sequence[Any]], columns: Sequence[str], *, title: str | None = None
) -> None:
    """A rich table; ``None`` prints as ``-``."""
    table = Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console().print(table)


def listing(
    output: Output,
    items: Sequence[Any],
    columns: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    *,
    as_json: Callable[[Any], Any] | None = None,
) -> None:
    """Print ``items`` as a table (one ``row(item)`` each) or as a JSON array."""
    if output is Output.JSON:
        print_json([as_json(i) if as_json else i for i in items])
    else:
        print_table([row(i) for i in items], columns)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, flag: str) -> float:
    """Seconds of a duration as Slurm users and people type it: ``90`` (seconds), ``90s``,
    ``30m``, ``2h``, ``1d``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or ``D-HH:MM:SS``
    (``sbatch --time``'s forms, a bare number here being seconds). Exits with a usage error
    naming ``flag`` for anything else."""
    value = text.strip().lower()
    try:
        if value and value[-1] in _DURATION_UNITS:
            seconds = float(value[:-1]) * _DURATION_UNITS[value[-1]]
        elif ":" in value or "-" in value:
            days, _, clock = value.rpartition("-")
            parts = [int(p) for p in clock.split(":")]
            if "-" in value:  # D-HH[:MM[:SS]]: the clock starts with hours
                parts += [0] * (3 - len(parts))
            elif len(parts) == 2:  # MM:SS
                parts = [0, *parts]
            if len(parts) != 3 or any(p < 0 for p in parts) or not all(p < 60 for p in parts[1:]):
                raise ValueError(text)
            hours, minutes, secs = parts
            seconds = (int(days or 0) * 24 + hours) * 3600 + minutes * 60 + secs
        else:
            seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds != seconds:  # also NaN
        fail(
            f"{flag} {text!r} is not a duration: give seconds (3600), a unit (90m, 2h, 1d) or"
            " a clock as sbatch --time takes it (1:00:00, 2-12:00:00)",
            code=2,
        )
    return seconds


def server_modules(command: str) -> None:
    """Exit with what to install when the server's dependencies are missing (a client-only
    ``pip install apportion``); ``command`` is the one that needs them."""
    needed = (
        "numpy",
        "sqlalchemy",
        "aiosqlite",
        "pydantic_settings",
        "psutil",
        "prometheus_client",
    )
    if not all(importlib.util.find_spec(name) for name in needed):
        fail(
            f"`apportion {command}` needs the server's dependencies, which this install lacks:"
            " pip install 'apportion[server]'",
            code=2,
        )
