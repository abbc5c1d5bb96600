"""REST routes of stored files (docs/files.md; seed 003's files, in Apportion's own names).

Scopes: reading needs ``read``; uploading and deleting need ``submit``. A key sees its own
account's files (an operator or admin key: every account's) and deletes those its own user
uploaded (an admin key: any); another account's file answers as an unknown id.

``POST /files`` takes ``multipart/form-data`` with one part ``file`` whose filename is the
file's name; the content is streamed to disk and hashed on the way (never held in memory).
``GET /files/{id}/contents`` serves it as aiohttp serves files: ``Accept-Ranges: bytes``, a
single range or a suffix range answered 206 with ``Content-Range``, 416 past the end — always
as an attachment of type ``application/octet-stream`` (never rendered by a browser).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import BadHttpMessage

from apportion.errors import Forbidden, InvalidRequest, MessageTooLarge, NotFound
from apportion.files import FileBook, FileRecord, FileType, check_file_name
from apportion.ownership import Owner
from apportion.server.auth import Scope, principal_of
from apportion.server.http_common import (
    ctx,
    json_response,
    paged_response,
    within_body_deadline,
)
from apportion.server.routing import ApiRoutes, query_of
from apportion.server.schemas import (
    Ack,
    FileLines,
    FileLinesQuery,
    FilesQuery,
    FileUploadForm,
    FileUploadQuery,
    StoredFile,
)

api = ApiRoutes("files", on_leader=True)

CHUNK_BYTES = 256 * 1024
MAX_LINES_BYTES = 4 * 2**20  # what one GET /files/{id}/lines reads at most


def file_book(request: web.Request) -> FileBook:
    """The server's stored files (every route of files, native or a seed's: ``on_leader``,
    served where the jobs run)."""
    files = ctx(request).files
    assert files is not None
    return files


def visible_file(request: web.Request) -> FileRecord:
    who = principal_of(request).actor
    return file_book(request).get(request.match_info["file_id"], visible=who.may_see)


@api.post(
    "/files",
    scope=Scope.SUBMIT,
    query=FileUploadQuery,
    body_doc=FileUploadForm,
    body_media="multipart/form-data",
    response=StoredFile,
    status=201,
    errors=(MessageTooLarge,),
)
async def upload_file(request: web.Request) -> web.Response:
    """Store a file (multipart part ``file``; ?type=input by default); its record, with sha512."""
    record = await receive_upload(request, query_of(request, FileUploadQuery).type)
    return json_response(record.public(), status=201)


async def receive_upload(request: web.Request, kind: FileType) -> FileRecord:
    """The request's multipart form, one part ``file``, stored as a file of ``kind`` of the
    calling key's account and user (also seed 003's ``POST /api/v2/files/contents/``)."""
    mimetype = parse_mimetype(request.headers.get("Content-Type", ""))
    if mimetype.type != "multipart" or not mimetype.parameters.get("boundary"):
        raise InvalidRequest(
            f"POST {request.path} takes multipart/form-data (with its boundary parameter) with"
            " one part 'file' whose filename is the file's name",
            path="body",
        )
    owner = principal_of(request).actor.owner
    try:
        return await within_body_deadline(request, _receive(request, kind, owner))
    except BadHttpMessage as exc:
        raise InvalidRequest(
            f"the multipart body is malformed ({exc.message}); send one part 'file'", path="body"
        ) from None


async def _receive(request: web.Request, kind: FileType, owner: Owner) -> FileRecord:
    """The one part ``file`` of the form, stored; :class:`InvalidRequest` for any other."""
    reader = await request.multipart()
    record: FileRecord | None = None
    async for part in reader:
        if not isinstance(part, BodyPartReader) or part.name != "file":
            name = part.name if isinstance(part, BodyPartReader) else "a nested multipart"
            raise InvalidRequest(
                f"unknown form part {name!r}; send one part 'file'", path=str(name)
            )
        if record is not None:
            raise InvalidRequest("send one part 'file' per upload, not several", path="file")
        filename = check_file_name(part.filename or "", path="file.filename")
        record = await file_book(request).receive(owner, filename, kind, _chunks(part))
    if record is None:
        raise InvalidRequest("the form part 'file' (with a filename) is missing", path="file")
    return record


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield bytes(chunk)


@api.get("/files", scope=Scope.READ, query=FilesQuery, response=list[StoredFile])
async def list_files(request: web.Request) -> web.Response:
    """The files the key may see, oldest first (?type=, ?job_id=; a page: limit, offset)."""
    query = query_of(request, FilesQuery)
    who = principal_of(request).actor
    found = [
        f
        for f in file_book(request).visible(who.may_see)
        if (query.type is None or f.type is query.type)
        and (query.job_id is None or f.job_id == query.job_id)
    ]
    return paged_response(request, found, query.offset, query.limit, FileRecord.public)


@api.get("/files/{file_id}", scope=Scope.READ, response=StoredFile, errors=(NotFound,))
async def read_file_record(request: web.Request) -> web.Response:
    """One file's record: name, size, sha512, type, owner, when, the job it came from."""
    return json_response(visible_file(request).public())


@api.get(
    "/files/{file_id}/contents",
    scope=Scope.READ,
    response_media="application/octet-stream",
    success={200: "the whole content", 206: "the range asked for (Range: bytes=…)"},
    errors=(NotFound,),
)
async def download_file(request: web.Request) -> web.StreamResponse:
    """The file's content; supports HTTP Range (one range or a suffix), 416 past its end."""
    return file_content(request, visible_file(request))


def file_content(request: web.Request, record: FileRecord) -> web.FileResponse:
    """``record``'s content as aiohttp serves files (ranges, 416), always as an attachment."""
    disposition = f"attachment; filename*=UTF-8''{quote(record.name, safe='')}"
    return web.FileResponse(
        file_book(request).content(record),
        chunk_size=CHUNK_BYTES,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
        },
    )


@api.get(
    "/files/{file_id}/lines",
    scope=Scope.READ,
    query=FileLinesQuery,
    response=FileLines,
    errors=(NotFound,),
)
async def file_lines(request: web.Request) -> web.Response:
    """Lines of a text file (?start=0&count=100), decoded as UTF-8; next is null at its end."""
    query = query_of(request, FileLinesQuery)
    path = file_book(request).content(visible_file(request))
    lines, following = await read_lines(path, query.start, query.count)
    return json_response({"lines": lines, "start": query.start, "next": following})


async def read_lines(path: Path, start: int, count: int) -> tuple[list[str], int | None]:
    """Up to ``count`` lines from line ``start`` (at most :data:`MAX_LINES_BYTES` of them),
    and the number of the line after them, None at the end of the file."""

    def read() -> tuple[list[str], int | None]:
        lines: list[str] = []
        budget = MAX_LINES_BYTES
        with path.open("rb") as source:
            for number, raw in enumerate(source):
                if number < start:
                    continue
                if len(lines) == count or budget < len(raw):
                    return lines, number
                budget -= len(raw)
                lines.append(raw.rstrip(b"\r\n").decode("utf-8", "replace"))
        return lines, None

    return await asyncio.to_thread(read)


@api.delete("/files/{file_id}", scope=Scope.SUBMIT, response=Ack, errors=(NotFound, Forbidden))
async def delete_file(request: web.Request) -> web.Response:
    """Delete a file (its uploader or an admin key)."""
    record = visible_file(request)
    who = principal_of(request).actor
    if not who.may_change(record.owner):
        raise Forbidden(
            f"file {record.file_id} was uploaded by user {record.owner.user!r} of account"
            f" {record.owner.account!r}; only that user or an admin key may delete it",
            details={"id": record.file_id, "user": record.owner.user},
        )
    await file_book(request).delete(record)
    return json_response({"success": True})
