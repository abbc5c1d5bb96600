"""The user's credentials file, in the INI style of Rescale's ``apiconfig`` (seed 003).

``~/.config/apportion/credentials`` holds one section per profile::

    [default]
    url = http://127.0.0.1:8080
    ws_url = ws://127.0.0.1:8765
    api_key = apn_…

``apportion serve`` adds a profile when it generates the first admin key — ``[default]`` if the
file has none, else one named after the server's address (``[127.0.0.1-8081]``), never
replacing a profile that exists (:func:`add_profile`); the CLI and the Python client read it. Rescale's own names (``apibaseurl``, ``apikey``) are
read as ``url`` and ``api_key`` when ours are absent. The file is written atomically with
mode 0600 in a 0700 directory, and a rewrite replaces only its own profile's section: other
sections, comments included, are kept byte for byte.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("url", "ws_url", "api_key")
_ALIASES = {"url": "apibaseurl", "api_key": "apikey"}
_HEADER = re.compile(r"^\s*\[([^\]]*)\]\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class Profile:
    """One profile of the credentials file; a missing field is None."""

    url: str | None
    ws_url: str | None
    api_key: str | None


def default_credentials_path() -> Path:
    """``$APPORTION_CREDENTIALS`` if set, else ``$XDG_CONFIG_HOME`` (or ``~/.config``) +
    ``/apportion/credentials``."""
    explicit = os.environ.get("APPORTION_CREDENTIALS")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "apportion" / "credentials"


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"profile name {name!r} is not valid: use 1–64 letters, digits, '_', '-', '.', '@'"
        )


def profile_names(path: Path | None = None) -> list[str]:
    """The profiles the credentials file holds, in file order ([] when there is no file)."""
    try:
        text = (path or default_credentials_path()).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [m.group(1).strip() for m in map(_HEADER.match, text.splitlines()) if m]


def read_profile(name: str = "default", path: Path | None = None) -> Profile | None:
    """The named profile, or None when the file or the section does not exist (the CLI and
    client then fall back to flags and environment). Raises ``ValueError`` for a file that
    is not INI, naming the file."""
    _check_name(name)
    target = path or default_credentials_path()
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, default_section="\x00no-defaults"
    )
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        parser.read_string(text, source=str(target))
    except configparser.Error as exc:
        raise ValueError(f"credentials file {target} is not valid INI: {exc}") from None
    if not parser.has_section(name):
        return None
    section = parser[name]

    def field(key: str) -> str | None:
        value = section.get(key) or section.get(_ALIASES.get(key, key))
        return value.strip() or None if value else None

    return Profile(url=field("url"), ws_url=field("ws_url"), api_key=field("api_key"))


def _render(name: str, profile: Profile) -> str:
    lines = [f"[{name}]\n"]
    for key in FIELDS:
        value = getattr(profile, key)
        if value is None:
            continue
        if not value.strip() or value != value.strip() or value.splitlines() != [value]:
            raise ValueError(f"{key} must be one line without surrounding spaces; got {value!r}")
        lines.append(f"{key} = {value}\n")
    return "".join(lines)


def _replace_section(text: str, name: str, block: str) -> str:
    """``text`` with the ``[name]`` section(s) replaced by ``block`` (at the first one's
    place, or appended); every other line is kept as it was."""
    segments: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in re.findall(r"[^\n]*\n|[^\n]+$", text):  # "\n" only, as configparser reads
        header = _HEADER.match(line)
        if header:
            # Comment lines right above a header belong to that header's section.
            previous = segments[-1][1]
            cut = len(previous)
            while cut and previous[cut - 1].lstrip().startswith(("#", ";")):
                cut -= 1
            segments.append((header.group(1).strip(), previous[cut:]))
            del previous[cut:]
        segments[-1][1].append(line)
    kept = [(n, "".join(lines)) for n, lines in segments if n != name]
    first = next((i for i, (n, _) in enumerate(segments) if n == name), len(segments))
    position = sum(1 for n, _ in segments[:first] if n != name)
    if first < len(segments):  # keep the comments written above the old header
        old = segments[first][1]
        comments = old[: next(i for i, line in enumerate(old) if _HEADER.match(line))]
        block = "".join(comments) + block
    kept.insert(position, (name, block))
    out = ""
    for index, (_n, chunk) in enumerate(kept):
        if not chunk:
            continue
        if out and not out.endswith("\n"):
            out += "\n"
        if out and not out.endswith("\n\n") and index == position:
            out += "\n"  # a blank line before our section
        out += chunk
        if index == position and index + 1 < len(kept):
            out += "\n"  # and after it
    return out


def write_profile(name: str, profile: Profile, path: Path | None = None) -> Path:
    """Store ``profile`` as ``[name]`` and return the file's path (``apportion serve`` on the
    first start, ``apportion login``). Creates parent dirs (0700); writes a 0600 temp file in
    the same directory, fsyncs it and ``os.replace``s the old file, so a reader sees the old
    or the new file, never half of one. Other profiles are kept untouched."""
    _check_name(name)
    target = path or default_credentials_path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        old = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    text = _replace_section(old, name, _render(name, profile))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return target


def add_profile(profile: Profile, path: Path | None = None) -> tuple[str, Path]:
    """Store ``profile`` under a name the file does not use yet and return ``(name, path)``:
    ``default``, else ``<host>-<port>`` of ``profile.url``, else that with ``-2``, ``-3``, …
    (``apportion serve`` on a first start: a second server never takes the first one's
    profile, and its key is not lost)."""
    target = path or default_credentials_path()
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    taken = {m.group(1).strip() for m in map(_HEADER.match, text.splitlines()) if m}
    address = re.sub(r"[^A-Za-z0-9_.@-]+", "-", re.sub(r"^[a-z]+://", "", profile.url or ""))
    stem = address.strip("-")[:56] or "server"
    candidates = ["default", stem, *(f"{stem}-{n}" for n in range(2, 10_000))]
    name = next(c for c in candidates if c not in taken)
    return name, write_profile(name, profile, target)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
