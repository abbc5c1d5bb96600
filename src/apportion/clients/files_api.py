"""Stored files over REST (docs/files.md): the part of :class:`AsyncApportion` that uploads
a job's inputs and fetches its outputs. A mixin: it needs ``self._rest`` (a
:class:`RestTransport`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from apportion.clients.models import FileLines, StoredFile
from apportion.clients.rest import RestTransport

PAGE_SIZE = 1000


class FilesAPI:
    """File calls; mixed into :class:`~apportion.clients.AsyncApportion`."""

    _rest: RestTransport

    async def upload_file(
        self, path: str | Path, *, name: str | None = None, type: str = "input"
    ) -> StoredFile:
        """Store the local file ``path`` (streamed, never read whole into memory) under
        ``name`` (its own name by default) as a file of ``type`` (``input``, ``template``,
        ``parameter``, ``script``, ``output``, ``case``, ``temporary``); its record, with the
        SHA-512 the server computed."""
        source = Path(path)
        with await asyncio.to_thread(source.open, "rb") as content:
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("file", content, filename=name or source.name)
            response = await self._rest.send("POST", "/files", params={"type": type}, data=form)
        return StoredFile.model_validate(response.json())

    async def files(
        self, *, type: str | None = None, job_id: str | None = None
    ) -> list[StoredFile]:
        """The files this key may see, oldest first; only those of ``type``, or of ``job_id``."""
        params: dict[str, str | int] = {"limit": PAGE_SIZE}
        if type is not None:
            params["type"] = type
        if job_id is not None:
            params["job_id"] = job_id
        found: list[StoredFile] = []
        while True:
            response = await self._rest.send(
                "GET", "/files", params={**params, "offset": len(found)}
            )
            page = [StoredFile.model_validate(f) for f in response.json()]
            found += page
            if not page or "Link" not in response.headers:
                return found

    async def file(self, file_id: str) -> StoredFile:
        """One file's record; :class:`NotFoundError` when there is none (or it is another
        account's)."""
        return StoredFile.model_validate(await self._rest.call("GET", f"/files/{file_id}"))

    async def download_file(
        self, file_id: str, destination: str | Path, *, byte_range: str | None = None
    ) -> Path:
        """Write the file's content to ``destination`` (a file, or a directory to put it in
        under its own name); ``byte_range`` as HTTP's (``"0-99"``, ``"100-"``, ``"-100"``)
        for a part of it. The path written."""
        target = Path(destination)
        if await asyncio.to_thread(target.is_dir):
            target = target / (await self.file(file_id)).name
        headers = {"Range": f"bytes={byte_range}"} if byte_range else None
        await self._rest.download(f"/files/{file_id}/contents", target, headers=headers)
        return target

    async def file_lines(self, file_id: str, *, start: int = 0, count: int = 100) -> FileLines:
        """Lines ``start`` to ``start + count`` of a text file (the first is 0)."""
        params: dict[str, str | int] = {"start": start, "count": count}
        answer = await self._rest.call("GET", f"/files/{file_id}/lines", params=params)
        return FileLines.model_validate(answer)

    async def delete_file(self, file_id: str) -> None:
        """Delete a file this key's user uploaded (or any, with an admin key)."""
        await self._rest.call("DELETE", f"/files/{file_id}")
