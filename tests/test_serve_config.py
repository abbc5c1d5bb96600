"""Start-up rules: the bootstrap key, the credentials file, bind refusal, config precedence."""

from __future__ import annotations

import stat
from pathlib import Path

import aiohttp
import pytest

from apportion.app import Server
from apportion.config import Settings
from apportion.server.credentials import read_profile


async def test_first_start_generates_an_admin_key_and_writes_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "config" / "credentials"
    settings = Settings(
        host="127.0.0.1",
        port=0,
        ws_port=0,
        data_dir=tmp_path / "d",
        credentials_file=credentials,
        sandbox_workers=1,
    )
    server = Server(settings)
    await server.start()
    try:
        assert server.bootstrap_key is not None
        profile = read_profile("default", credentials)
        assert profile is not None and profile.api_key == server.bootstrap_key.secret
        assert profile.url == server.url and profile.ws_url == server.ws_url
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        headers = {"Authorization": f"Bearer {profile.api_key}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.get(f"{server.url}/keys") as r,
        ):
            assert r.status == 200
    finally:
        await server.stop()
    # a second start finds the admin key and generates none
    again = Server(settings)
    await again.start()
    try:
        assert again.bootstrap_key is None
    finally:
        await again.stop()


async def test_non_loopback_bind_without_auth_is_refused(tmp_path: Path) -> None:
    server = Server(Settings(host="0.0.0.0", port=0, ws_port=0, data_dir=tmp_path, auth=False))
    with pytest.raises(ValueError, match="auth"):
        await server.start()


def test_flag_beats_environment_beats_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "apportion.toml"
    config.write_text("port = 9001\nws_port = 9002\npolicy_timeout = 3.5\n")
    monkeypatch.setenv("APPORTION_WS_PORT", "9102")
    settings = Settings(config=config, policy_timeout=7.0)
    assert settings.port == 9001  # config file
    assert settings.ws_port == 9102  # environment over config file
    assert settings.policy_timeout == 7.0  # flag over config file
    assert settings.database_url.endswith("apportion.db")


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Settings(config=tmp_path / "nope.toml")
