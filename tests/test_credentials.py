"""The credentials file: location, round trip, 0600/0700 modes, atomic rewrite."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.server.credentials import (
    Profile,
    default_credentials_path,
    read_profile,
    write_profile,
)

LOCAL = Profile(url="http://127.0.0.1:8080", ws_url="ws://127.0.0.1:8765", api_key="apn_abc_123")

HAND_WRITTEN = """# my clusters; keep this comment
[us]
apibaseurl = https://us.example.test
apikey = rescale-style-key-0000

[default]
url = http://old:8080
api_key = old-key

; trailing comment of the prod section
[prod]
url = https://prod.example.test
ws_url = wss://prod.example.test/ws
api_key = prod%key=with:odd#chars
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_path_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("APPORTION_CREDENTIALS", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert default_credentials_path() == tmp_path / "home/.config/apportion/credentials"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_credentials_path() == tmp_path / "xdg/apportion/credentials"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")  # the XDG spec: absolute only
    assert default_credentials_path() == tmp_path / "home/.config/apportion/credentials"
    monkeypatch.setenv("APPORTION_CREDENTIALS", str(tmp_path / "explicit.ini"))
    assert default_credentials_path() == tmp_path / "explicit.ini"


def test_write_then_read_with_modes(tmp_path: Path) -> None:
    target = tmp_path / "cfg" / "apportion" / "credentials"
    assert write_profile("default", LOCAL, target) == target
    assert read_profile("default", target) == LOCAL
    assert _mode(target) == 0o600
    assert _mode(target.parent) == 0o700
    assert os.listdir(target.parent) == ["credentials"]  # no temp file left behind


def test_default_path_is_used_when_none_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("APPORTION_CREDENTIALS", str(tmp_path / "c" / "credentials"))
    written = write_profile("default", LOCAL)
    assert written == tmp_path / "c" / "credentials"
    assert read_profile() == LOCAL


def test_rewrite_is_0600_even_over_a_0644_file(tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    target.write_text(HAND_WRITTEN)
    target.chmod(0o644)
    write_profile("default", LOCAL, target)
    assert _mode(target) == 0o600


def test_rewrite_keeps_other_profiles_byte_for_byte(tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    target.write_text(HAND_WRITTEN)
    before_inode = target.stat().st_ino
    write_profile("default", LOCAL, target)
    text = target.read_text()
    us_block = HAND_WRITTEN[HAND_WRITTEN.index("# my") : HAND_WRITTEN.index("[default]")]
    prod_block = HAND_WRITTEN[HAND_WRITTEN.index("; trailing") :]
    assert text.startswith(us_block)
    assert text.endswith(prod_block)
    assert "old-key" not in text and "http://old:8080" not in text
    assert text.count("[default]") == 1
    assert read_profile("default", target) == LOCAL
    # Rescale's names are read as ours; '%', '=', ':' and '#' stay literal.
    assert read_profile("us", target) == Profile(
        url="https://us.example.test", ws_url=None, api_key="rescale-style-key-0000"
    )
    assert read_profile("prod", target) == Profile(
        url="https://prod.example.test",
        ws_url="wss://prod.example.test/ws",
        api_key="prod%key=with:odd#chars",
    )
    assert target.stat().st_ino != before_inode  # replaced, not rewritten in place


def test_comments_above_the_rewritten_section_stay(tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    target.write_text("# written by hand\n[default]\napi_key = old\n# about lab\n[lab]\nurl = u\n")
    write_profile("default", LOCAL, target)
    assert target.read_text() == (
        "# written by hand\n[default]\n"
        f"url = {LOCAL.url}\nws_url = {LOCAL.ws_url}\napi_key = {LOCAL.api_key}\n"
        "\n# about lab\n[lab]\nurl = u\n"
    )


def test_new_profile_is_appended_after_the_others(tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    target.write_text(HAND_WRITTEN.rstrip("\n"))  # no final newline: must still parse
    write_profile("eu", Profile(url="https://eu.example.test", ws_url=None, api_key="k"), target)
    text = target.read_text()
    assert text.startswith(HAND_WRITTEN.rstrip("\n"))
    assert text.endswith("\n\n[eu]\nurl = https://eu.example.test\napi_key = k\n")
    assert read_profile("prod", target) is not None
    assert read_profile("eu", target) == Profile("https://eu.example.test", None, "k")


def test_failed_write_leaves_the_old_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    target.write_text(HAND_WRITTEN)

    def broken_fsync(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_profile("default", LOCAL, target)
    assert target.read_text() == HAND_WRITTEN
    assert os.listdir(tmp_path) == ["credentials"]


def test_missing_file_or_profile_is_none(tmp_path: Path) -> None:
    assert read_profile("default", tmp_path / "nope") is None
    target = tmp_path / "credentials"
    target.write_text(HAND_WRITTEN)
    assert read_profile("staging", target) is None


def test_broken_file_names_itself(tmp_path: Path) -> None:
    target = tmp_path / "credentials"
    target.write_text("url = no section header\n")
    with pytest.raises(ValueError, match=str(target)):
        read_profile("default", target)


@pytest.mark.parametrize("name", ["", "a b", "x]y", "new\nline", "a" * 65])
def test_bad_profile_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="profile name"):
        write_profile(name, LOCAL, tmp_path / "credentials")
    assert not (tmp_path / "credentials").exists()


@pytest.mark.parametrize("value", ["two\nlines", " padded", "", "form\x0cfeed"])
def test_bad_values_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        write_profile("default", Profile(None, None, value), tmp_path / "credentials")


_values = st.one_of(
    st.none(),
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), min_size=1, max_size=30
    ),
)
_profiles = st.builds(Profile, url=_values, ws_url=_values, api_key=_values)


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.sampled_from(["default", "us", "eu", "lab.1"]), _profiles),
        min_size=1,
        max_size=6,
    )
)
def test_every_profile_reads_back_its_last_write(
    tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[str, Profile]]
) -> None:
    target = tmp_path_factory.mktemp("creds") / "credentials"
    last: dict[str, Profile] = {}
    for name, profile in writes:
        write_profile(name, profile, target)
        last[name] = profile
    for name, profile in last.items():
        assert read_profile(name, target) == profile
