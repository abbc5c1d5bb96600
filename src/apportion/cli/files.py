"""``apportion files``: a job's inputs uploaded, its outputs fetched (docs/files.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apportion.cli.common import Output, OutputOpt, command_group, listing, print_json, run
from apportion.clients.models import FileType

files_app = command_group("Stored files: a job's inputs and outputs.")


@files_app.command("upload")
def files_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The local file.", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option(help="Its name there (default: its own).")] = None,
    type_: Annotated[FileType, typer.Option("--type", help="What it is for.")] = FileType.INPUT,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Store a file; prints its id (give it to a job) and its SHA-512."""
    stored = run(ctx, lambda client: client.upload_file(path, name=name, type=type_))
    if output is Output.JSON:
        print_json(stored.model_dump())
        return
    typer.echo(f"Stored {stored.name} as file {stored.id} ({stored.size} bytes)")
    typer.echo(f"sha512 {stored.sha512}")


@files_app.command("list")
def files_list(
    ctx: typer.Context,
    type_: Annotated[
        FileType | None, typer.Option("--type", help="Only files of this type.")
    ] = None,
    job: Annotated[str | None, typer.Option(help="Only the outputs of this job.")] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """The files you may see, oldest first."""
    found = run(ctx, lambda client: client.files(type=type_, job_id=job))
    listing(
        output,
        found,
        ["ID", "NAME", "TYPE", "SIZE", "USER", "CREATED", "JOB"],
        lambda f: [f.id[:12], f.name, f.type, f.size, f.user, f.created_at, f.job_id],
        as_json=lambda f: f.model_dump(),
    )


@files_app.command("show")
def files_show(ctx: typer.Context, file_id: str, output: OutputOpt = Output.TABLE) -> None:
    """One file's record, with its SHA-512."""
    found = run(ctx, lambda client: client.file(file_id))
    if output is Output.JSON:
        print_json(found.model_dump())
        return
    for label, value in found.model_dump().items():
        typer.echo(f"{label:<11}{'-' if value is None else value}")


@files_app.command("download")
def files_download(
    ctx: typer.Context,
    file_id: str,
    destination: Annotated[
        Path, typer.Argument(help="Where to write it: a file, or a directory (its own name).")
    ] = Path("."),
    byte_range: Annotated[
        str | None,
        typer.Option("--range", help="Only these bytes, as HTTP's: 0-99, 100- or -100."),
    ] = None,
) -> None:
    """Fetch a file's content (all of it, or --range)."""
    written = run(
        ctx, lambda client: client.download_file(file_id, destination, byte_range=byte_range)
    )
    typer.echo(f"Wrote {written}")


@files_app.command("cat")
def files_cat(
    ctx: typer.Context,
    file_id: str,
    start: Annotated[int, typer.Option(min=0, help="The first line (0 is the first).")] = 0,
    lines: Annotated[int, typer.Option(min=1, max=10_000, help="How many lines.")] = 100,
) -> None:
    """Print lines of a text file."""
    page = run(ctx, lambda client: client.file_lines(file_id, start=start, count=lines))
    for line in page.lines:
        typer.echo(line)


@files_app.command("delete")
def files_delete(ctx: typer.Context, file_id: str) -> None:
    """Delete a file you uploaded."""
    run(ctx, lambda client: client.delete_file(file_id))
    typer.echo(f"Deleted file {file_id}")


def register(app: typer.Typer) -> None:
    """Add the ``files`` command group to ``app``."""
    app.add_typer(files_app, name="files")
