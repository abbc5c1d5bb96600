"""Safe unpacking of uploaded policy code: accepted formats and every refusal."""

from __future__ import annotations

import io
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import InvalidRequest
from apportion.policies.archive import seal, tree_sha256, unpack_policy_code

POLICY = b"class AIOSv1PolicyRule:\n    pass\n"


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:  # type: ignore[call-overload]
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special_member(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def refuse(data: bytes, filename: str, dest: Path, **caps: int) -> str:
    with pytest.raises(InvalidRequest) as caught:
        unpack_policy_code(data, filename, dest, **caps)
    assert caught.value.details["path"] == "code"
    assert list(dest.iterdir()) == []  # a refusal leaves nothing behind
    return caught.value.message


def test_zip_with_requirements_is_unpacked_and_not_installed(tmp_path: Path) -> None:
    data = make_zip({"code/function.py": POLICY, "code/requirements.txt": b"numpy\n"})
    root = unpack_policy_code(data, "policy.zip", tmp_path / "out")
    assert root == tmp_path / "out"
    assert (root / "code" / "function.py").read_bytes() == POLICY
    assert (root / "code" / "requirements.txt").read_bytes() == b"numpy\n"


@pytest.mark.parametrize(
    ("filename", "mode"),
    [("p.tar.gz", "w:gz"), ("p.tgz", "w:gz"), ("p.tar.xz", "w:xz"), ("P.TAR.GZ", "w:gz")],
)
def test_tar_formats_with_a_top_folder(tmp_path: Path, filename: str, mode: str) -> None:
    folder = tarfile.TarInfo("mypolicy")
    folder.type = tarfile.DIRTYPE
    members = [
        (folder, None),
        file_member("mypolicy/code/function.py", POLICY),
        file_member("mypolicy/code/helper.py", b"X = 1\n"),
    ]
    root = unpack_policy_code(make_tar(members, mode), filename, tmp_path)
    assert root == tmp_path / "mypolicy"
    assert (root / "code" / "function.py").read_bytes() == POLICY
    assert (root / "code" / "helper.py").read_bytes() == b"X = 1\n"


def test_zip_with_top_folder_and_macosx_litter(tmp_path: Path) -> None:
    data = make_zip({"p/code/function.py": POLICY, "__MACOSX/p/._function.py": b"junk"})
    root = unpack_policy_code(data, "p.zip", tmp_path)
    assert root == tmp_path / "p"
    assert not (tmp_path / "__MACOSX").exists()


def test_single_python_file_becomes_code_function_py(tmp_path: Path) -> None:
    root = unpack_policy_code(POLICY, "anything.py", tmp_path)
    assert (root / "code" / "function.py").read_bytes() == POLICY


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("../evil.py", "'..'"),
        ("code/../../evil.py", "'..'"),
        ("/etc/evil.py", "absolute"),
        ("C:/evil.py", "absolute"),
        ("code\\function.py", "backslash"),
    ],
)
def test_bad_names_are_refused_in_zip_and_tar(tmp_path: Path, name: str, words: str) -> None:
    zipped = make_zip({"code/function.py": POLICY, name: b"x"})
    assert words in refuse(zipped, "p.zip", tmp_path / "z")
    tarred = make_tar([file_member("code/function.py", POLICY), file_member(name, b"x")])
    assert words in refuse(tarred, "p.tar.gz", tmp_path / "t")
    assert not (tmp_path / "evil.py").exists()
    assert not Path("/etc/evil.py").exists()


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "device, fifo"),
        (tarfile.FIFOTYPE, "device, fifo"),
    ],
)
def test_links_and_special_files_in_tar_are_refused(
    tmp_path: Path, kind: bytes, words: str
) -> None:
    members = [file_member("code/function.py", POLICY), special_member("code/x", kind, "/etc")]
    message = refuse(make_tar(members), "p.tar.gz", tmp_path)
    assert words in message
    assert "upload a .zip" in message  # says what is accepted


def test_symlink_in_zip_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("code/function.py", POLICY)
        link = zipfile.ZipInfo("code/link")
        link.create_system = 3
        link.external_attr = (0o120777 << 16) & 0xFFFF0000  # S_IFLNK | 0777
        archive.writestr(link, "/etc/passwd")
    assert "symbolic link" in refuse(buf.getvalue(), "p.zip", tmp_path)


def test_zip_bomb_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    # 3 MiB of zeros deflate to a few KiB; the cap is 1 MiB, so it is refused while streaming.
    data = make_zip({"code/function.py": POLICY, "code/bomb.bin": b"\0" * (3 * 2**20)})
    assert len(data) < 2**20 // 16
    message = refuse(data, "p.zip", tmp_path, max_bytes=2**20)
    assert "uncompressed size" in message
    assert str(2**20) in message


def test_tar_bomb_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    # function.py (33 bytes) + 5000 zero bytes = 5033 > 4096
    members = [file_member("code/function.py", POLICY), file_member("big", b"\0" * 5000)]
    data = make_tar(members, "w:xz")
    assert len(data) < 4096
    assert "uncompressed size" in refuse(data, "p.tar.xz", tmp_path, max_bytes=4096)


def test_upload_itself_over_the_cap_is_refused(tmp_path: Path) -> None:
    assert "over the limit" in refuse(b"#" * 5000, "p.py", tmp_path, max_bytes=4096)


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    # 1 function.py + 10 helpers = 11 entries > max_files=10
    entries = {"code/function.py": POLICY} | {f"code/h{i}.py": b"" for i in range(10)}
    assert "more than 10 entries" in refuse(make_zip(entries), "p.zip", tmp_path, max_files=10)
    assert unpack_policy_code(make_zip(entries), "p.zip", tmp_path, max_files=11) == tmp_path


@pytest.mark.parametrize(
    "entries",
    [
        {"function.py": POLICY},
        {"code/main.py": POLICY},
        {"a/code/function.py": POLICY, "b/code/function.py": POLICY},
    ],
)
def test_missing_code_function_py_is_refused(tmp_path: Path, entries: dict[str, bytes]) -> None:
    message = refuse(make_zip(entries), "p.zip", tmp_path)
    assert "missing code/function.py" in message


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    data = make_tar([file_member("code/function.py", POLICY), file_member("code/function.py", b"")])
    assert "appears twice" in refuse(data, "p.tar.gz", tmp_path)


@pytest.mark.parametrize(
    ("data", "filename", "words"),
    [
        (b"not a zip at all", "p.zip", "not a readable zip"),
        (b"not gzip", "p.tar.gz", "not a readable gz"),
        (POLICY, "p.rar", "unknown extension"),
    ],
)
def test_unreadable_or_unknown_files_are_refused(
    tmp_path: Path, data: bytes, filename: str, words: str
) -> None:
    assert words in refuse(data, filename, tmp_path)


def test_a_non_empty_destination_is_a_caller_bug(tmp_path: Path) -> None:
    (tmp_path / "already").write_text("here")
    with pytest.raises(ValueError, match="not empty"):
        unpack_policy_code(POLICY, "p.py", tmp_path)


def test_tree_sha256_names_the_paths_and_bytes_and_seal_makes_the_tree_read_only(
    tmp_path: Path,
) -> None:
    root = unpack_policy_code(POLICY, "p.py", tmp_path / "a")
    same = unpack_policy_code(POLICY, "p.py", tmp_path / "b")
    assert tree_sha256(root) == tree_sha256(same)
    (same / "code" / "helper.py").write_text("")
    assert tree_sha256(root) != tree_sha256(same)  # a new file, even an empty one, counts
    seal(root)
    assert (root / "code").stat().st_mode & 0o777 == 0o555
    assert (root / "code" / "function.py").stat().st_mode & 0o777 == 0o444


SEGMENTS = st.sampled_from(["code", "..", ".", "", "a", "function.py", "x.py", "/"])


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join), max_size=5))
def test_nothing_is_ever_written_outside_dest(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as outer:
        dest = Path(outer) / "dest"
        entries = [file_member("code/function.py", POLICY)]
        entries += [file_member(n, b"x") for n in names if n.strip("/.")]
        try:
            unpack_policy_code(make_tar(entries), "p.tgz", dest)
        except InvalidRequest as exc:
            assert exc.details["path"] == "code"
        outside = [p for p in Path(outer).rglob("*") if not p.is_relative_to(dest)]
        assert outside == []
