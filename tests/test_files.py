"""Stored files (issue 12, item 1): uploaded as multipart, recorded with their SHA-512, served
with HTTP ranges as aiohttp serves files, read as lines, seen by their account and deleted by
their uploader, held to the size limits without leaving anything behind, and kept across a
restart — on a real server over real sockets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apportion.clients import AsyncApportion, NotFoundError
from apportion.files import FilesConfig
from tests.cli_helpers import as_json, cli, ok
from tests.conftest import ADMIN_KEY, Running, running_server

TEXT = b"".join(f"line {i}\n".encode() for i in range(1000))


def form(content: bytes, filename: str = "data.csv", name: str = "file") -> aiohttp.FormData:
    data = aiohttp.FormData(quote_fields=False)  # the name as typed, as browsers send it
    data.add_field(name, content, filename=filename, content_type="text/csv")
    return data


async def upload(
    http: aiohttp.ClientSession, url: str, content: bytes = TEXT, **options: Any
) -> tuple[int, dict[str, Any]]:
    query = options.pop("query", "")
    async with http.post(f"{url}/files{query}", data=form(content, **options)) as response:
        return response.status, await response.json()


async def key(running: Running, account: str, user: str) -> aiohttp.ClientSession:
    async with running.http.post(f"{running.url}/accounts", json={"name": account}) as response:
        assert response.status in (201, 409)
    body = {"name": user, "account": account, "user": user}
    async with running.http.post(f"{running.url}/keys", json=body) as response:
        issued = await response.json()
        assert response.status == 201, issued
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {issued['data']['api_key']}"})


async def test_an_upload_is_recorded_with_its_checksum_and_served_whole(
    running: Running,
) -> None:
    status, record = await upload(running.http, running.url, query="?type=parameter")
    assert status == 201, record
    assert record["name"] == "data.csv" and record["size"] == len(TEXT)
    assert record["sha512"] == hashlib.sha512(TEXT).hexdigest()
    assert record["type"] == "parameter" and record["job_id"] is None
    file_url = f"{running.url}/files/{record['id']}"
    async with running.http.get(file_url) as response:
        assert await response.json() == record
    async with running.http.get(f"{file_url}/contents") as response:
        assert response.status == 200
        assert await response.read() == TEXT
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Disposition"] == "attachment; filename*=UTF-8''data.csv"
    async with running.http.get(f"{running.url}/files") as response:
        assert [f["id"] for f in await response.json()] == [record["id"]]
        assert response.headers["X-Total-Count"] == "1"
    async with running.http.get(f"{running.url}/files?type=output") as response:
        assert await response.json() == []


@pytest.mark.parametrize(
    ("asked", "status", "content_range", "body"),
    [
        ("bytes=0-9", 206, f"bytes 0-9/{len(TEXT)}", TEXT[:10]),
        ("bytes=10-", 206, f"bytes 10-{len(TEXT) - 1}/{len(TEXT)}", TEXT[10:]),
        ("bytes=-7", 206, f"bytes {len(TEXT) - 7}-{len(TEXT) - 1}/{len(TEXT)}", TEXT[-7:]),
        (f"bytes={len(TEXT)}-", 416, f"bytes */{len(TEXT)}", None),
    ],
    ids=["first-ten", "from-ten", "last-seven", "past-the-end"],
)
async def test_ranged_downloads(
    running: Running, asked: str, status: int, content_range: str, body: bytes | None
) -> None:
    _, record = await upload(running.http, running.url)
    url = f"{running.url}/files/{record['id']}/contents"
    async with running.http.get(url, headers={"Range": asked}) as response:
        assert response.status == status
        assert response.headers["Content-Range"] == content_range
        if body is not None:
            assert await response.read() == body


async def test_lines_are_read_a_page_at_a_time(running: Running) -> None:
    _, record = await upload(running.http, running.url)
    url = f"{running.url}/files/{record['id']}/lines"
    async with running.http.get(f"{url}?start=998&count=5") as response:
        assert await response.json() == {
            "lines": ["line 998", "line 999"],
            "start": 998,
            "next": None,
        }
    async with running.http.get(f"{url}?count=3") as response:
        assert await response.json() == {
            "lines": ["line 0", "line 1", "line 2"],
            "start": 0,
            "next": 3,
        }
    async with running.http.get(f"{url}?count=0") as response:
        assert response.status == 400
        assert (await response.json())["error"]["details"]["path"] == "query.count"


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"filename": "../etc/passwd"}, "file.filename"),
        ({"filename": "a\\b"}, "file.filename"),
        ({"filename": "tab\tname"}, "file.filename"),
        ({"filename": "x" * 256}, "file.filename"),
        ({"name": "upload"}, "upload"),
    ],
    ids=["parent", "backslash", "control", "too-long", "unknown-part"],
)
async def test_a_bad_upload_is_refused_naming_what_is_wrong(
    running: Running, options: dict[str, str], path: str
) -> None:
    status, answer = await upload(running.http, running.url, **options)
    assert status == 400, answer
    assert answer["error"]["details"]["path"] == path
    assert _stored(running) == []  # nothing kept


async def test_a_name_that_decodes_to_a_path_or_a_line_break_is_refused(
    running: Running,
) -> None:
    # RFC 5987's filename* is decoded by the server: what it decodes to is checked
    for encoded in ("..%2F..%2Fescape", "bad%0Aname"):
        body = (
            "--b\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''{encoded}\r\n"
            "\r\nhello\r\n--b--\r\n"
        ).encode()
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        async with running.http.post(f"{running.url}/files", data=body, headers=headers) as r:
            answer = await r.json()
            assert r.status == 400, answer
            assert answer["error"]["details"]["path"] == "file.filename"
    assert _stored(running) == []


async def test_an_upload_that_is_not_a_form_or_asks_an_unknown_type_is_refused(
    running: Running,
) -> None:
    async with running.http.post(f"{running.url}/files", data=b"raw") as response:
        answer = await response.json()
        assert response.status == 400 and "multipart/form-data" in answer["message"]
    status, answer = await upload(running.http, running.url, query="?type=secret")
    assert status == 400 and answer["error"]["details"]["path"] == "query.type"
    status, answer = await upload(running.http, running.url, query="?kind=input")
    assert status == 400 and answer["error"]["details"]["path"] == "query.kind"


def _stored(running: Running) -> list[str]:
    root = running.server.settings.files_dir
    return sorted(p.name for p in root.iterdir())


async def test_limits_refuse_an_upload_and_keep_nothing_of_it(tmp_path: Path) -> None:
    limits = FilesConfig(max_file_bytes=5000, max_account_bytes=8000, max_account_files=3)
    async with running_server(tmp_path / "data", files=limits) as live:
        status, answer = await upload(live.http, live.url, b"x" * 5001)
        assert status == 413 and answer["error"]["details"]["limit_bytes"] == 5000
        assert _stored(live) == []
        status, first = await upload(live.http, live.url, b"x" * 5000)
        assert status == 201
        status, answer = await upload(live.http, live.url, b"y" * 3001)  # 5000 + 3001 > 8000
        assert status == 413 and answer["error"]["details"]["limit_bytes"] == 8000
        assert _stored(live) == [first["id"]]
        for _ in range(2):
            status, _answer = await upload(live.http, live.url, b"z")
            assert status == 201
        status, answer = await upload(live.http, live.url, b"z")
        assert status == 413 and answer["error"]["details"]["limit_files"] == 3


async def test_accounts_see_their_own_files_and_users_delete_their_own(
    running: Running,
) -> None:
    alice = await key(running, "team-a", "alice")
    bob = await key(running, "team-a", "bob")
    carol = await key(running, "team-b", "carol")
    async with alice, bob, carol:
        _, mine = await upload(alice, running.url)
        url = f"{running.url}/files/{mine['id']}"
        assert (mine["account"], mine["user"]) == ("team-a", "alice")
        async with bob.get(f"{url}/contents") as response:
            assert response.status == 200  # the same account reads it
        async with carol.get(f"{url}/contents") as response:
            assert response.status == 404  # another account: as an unknown id
        async with carol.get(f"{running.url}/files") as response:
            assert await response.json() == []
        async with carol.delete(url) as response:
            assert response.status == 404
        async with bob.delete(url) as response:
            assert response.status == 403  # another user of the account may not delete it
        async with alice.delete(url) as response:
            assert response.status == 200
        async with alice.get(url) as response:
            assert response.status == 404
    assert _stored(running) == []


async def test_files_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        _, record = await upload(live.http, live.url)
    async with running_server(data) as again:
        async with again.http.get(f"{again.url}/files/{record['id']}") as response:
            assert await response.json() == record
        async with again.http.get(f"{again.url}/files/{record['id']}/contents") as response:
            assert hashlib.sha512(await response.read()).hexdigest() == record["sha512"]


async def test_the_client_and_the_command_line_round_trip_a_file(
    running: Running, tmp_path: Path
) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 100)
    async with AsyncApportion(running.url, api_key=ADMIN_KEY) as client:
        stored = await client.upload_file(source, type="case")
        assert stored.sha512 == hashlib.sha512(source.read_bytes()).hexdigest()
        assert [f.id for f in await client.files(type="case")] == [stored.id]
        whole = await client.download_file(stored.id, tmp_path / "copy.bin")
        assert whole.read_bytes() == source.read_bytes()
        part = await client.download_file(stored.id, tmp_path / "part.bin", byte_range="-16")
        assert part.read_bytes() == source.read_bytes()[-16:]
        with pytest.raises(NotFoundError):
            await client.file("0" * 32)
    listed = as_json(await cli(running, "files", "list", "--type", "case", "-o", "json"))
    assert [f["id"] for f in listed] == [stored.id]
    into = tmp_path / "out"
    into.mkdir()
    said = ok(await cli(running, "files", "download", stored.id, str(into), "--range", "0-9"))
    assert (into / "weights.bin").read_bytes() == bytes(range(10)) and "Wrote" in said
    text = tmp_path / "notes.txt"
    text.write_text("first\nsecond\nthird\n")
    uploaded = ok(await cli(running, "files", "upload", str(text), "--type", "script"))
    file_id = uploaded.split(" as file ")[1].split()[0]
    lines = ok(await cli(running, "files", "cat", file_id, "--start", "1", "--lines", "1"))
    assert lines == "second\n"
    wrong = await cli(running, "files", "upload", str(text), "--type", "secret")
    assert wrong.exit_code == 2 and "--type" in wrong.stderr
    ok(await cli(running, "files", "delete", file_id))
    gone = await cli(running, "files", "show", file_id)
    assert gone.exit_code == 1 and "apportion files list" in gone.stderr
