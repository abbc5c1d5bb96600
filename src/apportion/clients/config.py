"""Where the client connects and with which key.

Resolution, field by field: explicit arguments (``--url``, ``AsyncApportion(url=…)``) beat the
environment (``APPORTION_URL``, ``APPORTION_WS_URL``, ``APPORTION_API_KEY``), which beats the
credentials file's profile (``--profile``, default ``default``; the file is
``~/.config/apportion/credentials`` or ``$APPORTION_CREDENTIALS``), which beats the defaults
(``http://127.0.0.1:8080``, ``ws://127.0.0.1:8765``, no key). A WebSocket URL that is given
nowhere is derived from the HTTP URL's host with port 8765.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from apportion.clients.errors import InvalidRequestError
from apportion.server.credentials import default_credentials_path, profile_names, read_profile

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_WS_PORT = 8765
ENV_URL = "APPORTION_URL"
ENV_WS_URL = "APPORTION_WS_URL"
ENV_API_KEY = "APPORTION_API_KEY"
ENV_PROFILE = "APPORTION_PROFILE"
DEFAULT_POLICY = "binpack:1.0-stable"
"""The policy a request names when it names none."""


@dataclass(frozen=True)
class ClientConfig:
    """A resolved configuration; ``sources`` says where each field came from
    (``argument``, ``environment``, ``profile <name>``, ``default``), for ``config show``."""

    url: str
    ws_url: str
    api_key: str | None
    profile: str
    sources: Mapping[str, str]

    def redacted_key(self) -> str | None:
        """The key with all but its first 8 characters hidden (never print a whole key)."""
        if self.api_key is None:
            return None
        return self.api_key[:8] + "…" if len(self.api_key) > 8 else "…"


def _ws_from(url: str) -> str:
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.hostname or '127.0.0.1'}:{DEFAULT_WS_PORT}"


def _check_url(value: str, field: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise InvalidRequestError(
            f"{field} {value!r} is not a URL like {schemes[0]}://host:port",
            code="InvalidRequest",
            details={"path": field},
        )
    return value.rstrip("/")


def resolve_config(
    *,
    url: str | None = None,
    ws_url: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    credentials_path: Path | None = None,
) -> ClientConfig:
    """Resolve the configuration (the CLI's global options and the clients' constructors call
    this). Raises :class:`InvalidRequestError` for a malformed URL or credentials file."""
    env = os.environ if environ is None else environ
    chosen = profile or env.get(ENV_PROFILE)
    name = chosen or "default"
    path = credentials_path or default_credentials_path()
    try:
        stored = read_profile(name, path)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), code="InvalidRequest") from None
    if chosen and stored is None:  # a profile asked for by name must exist: no silent default
        known = ", ".join(profile_names(path)) or "none"
        raise InvalidRequestError(
            f"profile {chosen!r} is not in the credentials file {path} (its profiles: {known})",
            code="InvalidRequest",
            details={"path": "profile", "profiles": profile_names(path)},
        )
    values: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    for field, given, env_name in (
        ("url", url, ENV_URL),
        ("ws_url", ws_url, ENV_WS_URL),
        ("api_key", api_key, ENV_API_KEY),
    ):
        from_profile = getattr(stored, field) if stored is not None else None
        for value, source in (
            (given, "argument"),
            (env.get(env_name) or None, "environment"),
            (from_profile, f"profile {name}"),
        ):
            if value:
                values[field], sources[field] = value, source
                break
        else:
            values[field], sources[field] = None, "default"
    http_url = _check_url(values["url"] or DEFAULT_URL, "url", ("http", "https"))
    socket_url = _check_url(values["ws_url"] or _ws_from(http_url), "ws_url", ("ws", "wss"))
    return ClientConfig(
        url=http_url,
        ws_url=socket_url,
        api_key=values["api_key"],
        profile=name,
        sources=sources,
    )
