"""A job's input files (issue 12, item 1): stored files named in ``config.input_files`` are
written into the job's working directory before it starts — copied, or extracted from a tar
or zip archive — as the job's own user (``apportion-jobs`` under CI, which runs as root), so
a link the user planted there leads only where the user could write anyway; archives that
would reach outside the working directory, or hold links, fail the job saying why; a file
that is not the account's is refused at submit, naming the field. Real server, real local
adapter, real OS users.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apportion.files import FilesConfig
from tests.cli_helpers import as_json, cli, ok
from tests.conftest import Running, running_server
from tests.jobs_helpers import PY, submit, wait_for

AS_ROOT = os.geteuid() == 0


async def stored(running: Running, content: bytes, filename: str, http: Any = None) -> str:
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", content, filename=filename)
    async with (http or running.http).post(f"{running.url}/files", data=form) as response:
        record = await response.json()
        assert response.status == 201, record
    return str(record["id"])


def tar_of(members: dict[str, bytes], *, link: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if link is not None:
            info = tarfile.TarInfo("shortcut")
            info.type, info.linkname = tarfile.SYMTYPE, link
            archive.addfile(info)
    return out.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


LIST_TREE = (
    "import os\n"
    "for top, dirs, files in sorted(os.walk('.')):\n"
    "    for f in sorted(files):\n"
    "        p = os.path.join(top, f)\n"
    "        print(p, open(p).read().strip())\n"
)


def escaped(jobs_root: Path) -> bool:
    return (jobs_root / "escape.txt").exists() or Path("/escape.txt").exists()


def planted(jobs_root: Path) -> tuple[Path, Path]:
    """A working directory of the job user's holding ``data.csv``, a link to a file of root's
    that the user may read but not write; the directory and that file."""
    victim = jobs_root / "roots.txt"
    victim.write_text("root's\n")
    victim.chmod(0o644)
    mine = jobs_root / "mine"
    mine.mkdir(mode=0o700)
    (mine / "data.csv").symlink_to(victim)
    os.lchown(mine / "data.csv", *_ids("apportion-jobs"))
    shutil.chown(mine, "apportion-jobs", "apportion-jobs")
    return mine, victim


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


async def output_of(running: Running, job_id: str) -> str:
    async with running.http.get(f"{running.url}/jobs/{job_id}/logs") as response:
        return await response.text()


async def test_inputs_are_copied_and_extracted_into_the_working_directory(
    running: Running, fleet: Any, jobs_root: Path
) -> None:
    plain = await stored(running, b"1,2,3\n", "data.csv")
    packed = await stored(running, tar_of({"a.txt": b"alpha", "sub/b.txt": b"beta"}), "in.tgz")
    zipped = await stored(running, zip_of({"z/c.txt": b"gamma"}), "more.zip")
    inputs = [{"id": plain}, {"id": packed, "decompress": True}, {"id": zipped, "decompress": True}]
    job_id = await submit(running, {"command": [PY, "-c", LIST_TREE], "input_files": inputs})
    record = await wait_for(running, job_id, "completed", "failed")
    assert record["status"] == "completed", record
    assert (await output_of(running, job_id)).splitlines() == [
        "./a.txt alpha",
        "./data.csv 1,2,3",
        "./sub/b.txt beta",
        "./z/c.txt gamma",
    ]
    if AS_ROOT:  # written as the job's user, not as the server
        staged = jobs_root / job_id / "data.csv"
        assert staged.stat().st_uid == os.stat(jobs_root / job_id).st_uid != 0


@pytest.mark.parametrize(
    ("archive", "filename", "words"),
    [
        (tar_of({"../escape.txt": b"x"}), "up.tgz", "would land outside the working directory"),
        (tar_of({"/etc/evil": b"x"}), "abs.tgz", "would land outside the working directory"),
        (tar_of({"ok.txt": b"x"}, link="/etc/shadow"), "link.tgz", "is not a regular file"),
        (zip_of({"../../escape.txt": b"x"}), "up.zip", "would land outside the working directory"),
        (b"not an archive", "fake.tgz", "not a tar archive"),
    ],
    ids=["tar-parent", "tar-absolute", "tar-symlink", "zip-parent", "not-an-archive"],
)
async def test_an_archive_that_would_reach_outside_fails_the_job_saying_why(
    running: Running, fleet: Any, jobs_root: Path, archive: bytes, filename: str, words: str
) -> None:
    file_id = await stored(running, archive, filename)
    job_id = await submit(
        running,
        {"command": [PY, "-c", "pass"], "input_files": [{"id": file_id, "decompress": True}]},
    )
    record = await wait_for(running, job_id, "completed", "failed")
    assert record["status"] == "failed"
    assert f"staging input file {file_id} ({filename}) failed" in record["failed_reason"]
    assert words in record["failed_reason"]
    assert not escaped(jobs_root)


@pytest.mark.skipif(not AS_ROOT, reason="needs root to plant a link as another user")
async def test_a_planted_link_is_replaced_not_followed(
    running: Running, fleet: Any, jobs_root: Path
) -> None:
    # the job user's own directory holds data.csv -> a file of root's it may not write
    mine, victim = planted(jobs_root)
    file_id = await stored(running, b"payload\n", "data.csv")
    job_id = await submit(
        running,
        {
            "command": [PY, "-c", "print(open('data.csv').read().strip())"],
            "working_dir": str(mine),
            "input_files": [{"id": file_id}],
        },
    )
    record = await wait_for(running, job_id, "completed", "failed")
    assert record["status"] == "completed", record
    assert victim.read_text() == "root's\n"
    assert not (mine / "data.csv").is_symlink()
    assert (await output_of(running, job_id)).strip() == "payload"


async def test_inputs_that_are_not_the_accounts_or_not_archives_are_refused_at_submit(
    running: Running, fleet: Any
) -> None:
    async with running.http.post(f"{running.url}/accounts", json={"name": "other"}) as response:
        assert response.status == 201
    body = {"name": "o", "account": "other", "user": "o"}
    async with running.http.post(f"{running.url}/keys", json=body) as response:
        key = (await response.json())["data"]["api_key"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as theirs:
        foreign = await stored(running, b"theirs", "theirs.csv", http=theirs)
    mine = await stored(running, b"mine", "mine.csv")
    cases = [
        ([{"id": "0" * 32}], "body.config.input_files[0].id", "is no file of account"),
        ([{"id": foreign}], "body.config.input_files[0].id", "is no file of account"),
        ([{"id": mine, "decompress": True}], "body.config.input_files[0].decompress", "no archive"),
        ([{"id": mine}, {"id": mine}], "body.config.input_files[1].id", "a second file named"),
        ([{"id": "../x"}], "body.config.input_files[0].id", "pattern"),
    ]
    for inputs, path, words in cases:
        config = {"command": [PY, "-c", "pass"], "input_files": inputs}
        async with running.http.post(
            f"{running.url}/jobs/submit", json={"config": config}
        ) as response:
            answer = await response.json()
            assert response.status == 400, answer
        assert answer["error"]["details"]["path"] == path
        assert words in answer["message"], answer["message"]


WRITE_OUTPUTS = (
    "import os\n"
    "os.makedirs('results')\n"
    "open('results/a.csv', 'w').write('a')\n"
    "open('results/b.csv', 'w').write('bb')\n"
    "open('log.txt', 'w').write('done')\n"
    "open('scratch.bin', 'w').write('not asked for')\n"
    "os.symlink('/etc/hostname', 'results/link.csv')\n"
)


async def test_outputs_are_registered_as_files_of_the_job_when_it_ends(
    running: Running, fleet: Any
) -> None:
    config = {
        "command": [PY, "-c", WRITE_OUTPUTS],
        "output_files": ["results/*.csv", "*.txt"],
    }
    job_id = await submit(running, config)
    record = await wait_for(running, job_id, "completed", "failed")
    assert record["status"] == "completed", record
    async with running.http.get(f"{running.url}/files?job_id={job_id}") as response:
        outputs = {f["name"]: f for f in await response.json()}
    # the link is not followed: a job cannot make the server read a file through it
    assert sorted(outputs) == ["log.txt", "results/a.csv", "results/b.csv"]
    assert {f["type"] for f in outputs.values()} == {"output"}
    assert {f["size"] for f in outputs.values()} == {4, 1, 2}
    async with running.http.get(
        f"{running.url}/files/{outputs['results/b.csv']['id']}/contents"
    ) as response:
        assert await response.read() == b"bb"
    async with running.http.get(f"{running.url}/jobs/{job_id}/statuses") as response:
        history = await response.json()
    assert "3 output file(s) registered" in history[-1]["reason"]
    # an output is another job's input, under its own name
    reader = await submit(
        running,
        {
            "command": [PY, "-c", "print(open('b.csv').read())"],
            "input_files": [{"id": outputs["results/b.csv"]["id"]}],
        },
    )
    await wait_for(running, reader, "completed")
    assert (await output_of(running, reader)).strip() == "bb"


async def test_outputs_past_the_accounts_limit_are_not_kept_and_the_end_says_so(
    tmp_path: Path,
) -> None:
    limits = FilesConfig(max_account_bytes=3)
    async with running_server(tmp_path / "data", files=limits) as live:
        await live.load_demo_fleet()
        config = {"command": [PY, "-c", WRITE_OUTPUTS], "output_files": ["results/*.csv", "*.txt"]}
        job_id = await submit(live, config)
        record = await wait_for(live, job_id, "completed", "failed")
        assert record["status"] == "completed"
        async with live.http.get(f"{live.url}/jobs/{job_id}/statuses") as response:
            reason = (await response.json())[-1]["reason"]
        # a.csv (1 byte) and b.csv (2) fill the 3 bytes; log.txt (4) is refused
        assert "2 output file(s) registered; not all:" in reason and "limit of 3 bytes" in reason


@pytest.mark.parametrize("pattern", ["/etc/*", "../*", "a/../../b", ""])
async def test_output_patterns_outside_the_working_directory_are_refused(
    running: Running, fleet: Any, pattern: str
) -> None:
    config = {"command": [PY, "-c", "pass"], "output_files": [pattern]}
    async with running.http.post(f"{running.url}/jobs/submit", json={"config": config}) as r:
        answer = await r.json()
        assert r.status == 400, answer
    assert answer["error"]["details"]["path"].startswith("body.config.output_files")


async def test_the_command_line_gives_inputs_and_keeps_outputs(
    running: Running, fleet: Any, tmp_path: Path
) -> None:
    data = await stored(running, b"7\n", "seed.txt")
    archive = await stored(running, tar_of({"cfg/a.ini": b"x=1"}), "cfg.tgz")
    program = "print(open('seed.txt').read().strip(), open('cfg/a.ini').read()); open('out.txt', 'w').write('42')"
    said = ok(
        await cli(
            running, "submit", "--input", data, "--unpack", archive, "--output", "*.txt",
            "--wait", "--", PY, "-c", program,
        )
    )  # fmt: skip
    assert "7 x=1" in said
    job_id = said.split("Submitted job ")[1].split()[0]
    kept = as_json(await cli(running, "files", "list", "--job", job_id, "-o", "json"))
    # the pattern takes what is there at the end: the staged input seed.txt matches too
    assert [f["name"] for f in kept] == ["out.txt", "seed.txt"]
    wrong = await cli(running, "submit", "--input", "0" * 32, "--", PY, "-c", "pass")
    assert wrong.exit_code == 1
    assert "--input/--unpack:" in wrong.stderr and "apportion files upload" in wrong.stderr
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        f"command = [\"{PY}\", \"-c\", \"open('r.txt', 'w').write(open('seed.txt').read())\"]\n"
        f'input_files = ["{data}"]\noutput_files = ["r.txt"]\n'
    )
    said = ok(await cli(running, "submit", "--wait", str(job_file)))
    from_file = said.split("Submitted job ")[1].split()[0]
    kept = as_json(await cli(running, "files", "list", "--job", from_file, "-o", "json"))
    assert [f["name"] for f in kept] == ["r.txt"]
