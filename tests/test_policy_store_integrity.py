"""Stored policy code is content-addressed, read-only and checked; a deleted URI stays taken."""

from __future__ import annotations

from pathlib import Path

from apportion.policies.archive import tree_sha256
from tests.conftest import running_server
from tests.test_policy_upload import upload

SEED_CODE = (
    Path(__file__).parent / "policies" / "seed_style" / "code" / "function.py"
).read_bytes()
RECORD = {"name": "kept", "version": "1.0", "release_tag": "beta"}
URI = "kept:1.0-beta"


async def test_a_deleted_uri_is_a_tombstone_even_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        response = await upload(live, RECORD, SEED_CODE, "function.py")
        assert response.status == 201, await response.text()
        async with live.http.delete(f"{live.url}/policies/{URI}") as deleted:
            assert deleted.status == 200, await deleted.text()
        again = await upload(live, RECORD, SEED_CODE, "function.py")
        assert again.status == 409
        body = await again.json()
        assert URI in body["message"] and "new version" in body["message"], body
    async with running_server(data) as live:
        again = await upload(live, RECORD, SEED_CODE, "function.py")
        assert again.status == 409, await again.text()
        async with live.http.get(f"{live.url}/policies/{URI}") as gone:
            assert gone.status == 404
        newer = await upload(live, {**RECORD, "version": "1.1"}, SEED_CODE, "function.py")
        assert newer.status == 201, await newer.text()


async def test_stored_code_is_named_by_its_digest_read_only_and_checked_at_load(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with running_server(data) as live:
        response = await upload(live, RECORD, SEED_CODE, "function.py")
        assert response.status == 201, await response.text()
    [code_dir] = [p for p in (data / "policies").iterdir() if not p.name.startswith(".")]
    assert code_dir.name == tree_sha256(code_dir)
    function = code_dir / "code" / "function.py"
    assert function.stat().st_mode & 0o222 == 0  # nobody may write it
    assert code_dir.stat().st_mode & 0o222 == 0
    # tampering on disk (root can): the store leaves the policy out when it loads
    function.chmod(0o644)
    function.write_bytes(SEED_CODE + b"\n# changed behind the store's back\n")
    async with running_server(data) as live, live.http.get(f"{live.url}/policies/{URI}") as r:
        assert r.status == 404, await r.text()
