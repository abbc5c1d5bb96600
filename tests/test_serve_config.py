"""Start-up rules: the bootstrap key, the credentials file, bind refusal, config precedence."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import stat
import sys
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from apportion.app import Server, settle_collector
from apportion.cli.app import app
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


def test_a_serving_process_sets_its_start_aside_from_the_collector() -> None:
    # apportion serve and demo, once started: young collections every 20,000 new objects,
    # not 700, and what exists then never traversed again (docs/performance.md)
    threshold = gc.get_threshold()
    try:
        settle_collector()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold()[0] == 20_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert gc.get_freeze_count() == 0


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


def test_serve_refuses_an_admin_key_on_the_command_line(tmp_path: Path) -> None:
    # Before, `serve --admin-key K` left K in /proc/<pid>/cmdline, which any local user (a
    # submit key's job among them) could read and use to make itself an admin key.
    env = {"APPORTION_DATA_DIR": str(tmp_path / "d"), "APPORTION_CREDENTIALS": str(tmp_path / "c")}
    result = CliRunner().invoke(
        app, ["serve", "--port", "0", "--admin-key", "a-key-on-the-command-line-123"], env=env
    )
    assert result.exit_code == 2, result.output
    assert "--admin-key is refused" in result.stderr
    assert "APPORTION_ADMIN_KEY" in result.stderr and "--admin-key-file" in result.stderr
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_the_admin_key_comes_from_a_file_the_owner_alone_may_read(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("a-key-from-a-private-file-456\n")
    key_file.chmod(0o600)
    settings = Settings(data_dir=tmp_path / "d", admin_key_file=key_file)
    assert settings.admin_key == "a-key-from-a-private-file-456"

    key_file.chmod(0o640)
    with pytest.raises(ValidationError, match="chmod 600"):
        Settings(data_dir=tmp_path / "d", admin_key_file=key_file)
    key_file.chmod(0o600)
    with pytest.raises(ValidationError, match="give one"):
        Settings(data_dir=tmp_path / "d", admin_key_file=key_file, admin_key="x" * 20)
    key_file.write_text("short\n")
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(data_dir=tmp_path / "d", admin_key_file=key_file)
    with pytest.raises(ValidationError, match="cannot be read"):
        Settings(data_dir=tmp_path / "d", admin_key_file=tmp_path / "missing")


async def test_serve_with_an_admin_key_file_makes_that_key_an_admin(tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("a-key-from-a-private-file-789\n")
    key_file.chmod(0o600)
    server = Server(
        Settings(
            host="127.0.0.1",
            port=0,
            ws_port=0,
            data_dir=tmp_path / "d",
            admin_key_file=key_file,
            write_credentials=False,
            sandbox_workers=1,
        )
    )
    await server.start()
    try:
        assert server.bootstrap_key is None  # the given key is the admin: none was generated
        headers = {"Authorization": "Bearer a-key-from-a-private-file-789"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.get(f"{server.url}/keys") as response,
        ):
            assert response.status == 200
    finally:
        await server.stop()


async def test_a_second_server_adds_its_own_profile_and_keeps_the_first(tmp_path: Path) -> None:
    # before, a second server with another data dir overwrote [default]: the first server's
    # admin key was lost (issue 21, item 13)
    credentials = tmp_path / "config" / "credentials"
    secrets = []
    for data in ("first", "second", "third"):
        server = Server(
            Settings(
                host="127.0.0.1",
                port=0,
                ws_port=0,
                data_dir=tmp_path / data,
                credentials_file=credentials,
                sandbox_workers=1,
            )
        )
        await server.start()
        try:
            assert server.bootstrap_key is not None
            secrets.append((server.url, server.bootstrap_key.secret))
        finally:
            await server.stop()
    (first_url, first_key), (second_url, second_key), (third_url, third_key) = secrets
    first = read_profile("default", credentials)
    assert first is not None and (first.url, first.api_key) == (first_url, first_key)
    host_port = second_url.removeprefix("http://").replace(":", "-")
    second = read_profile(host_port, credentials)
    assert second is not None and (second.url, second.api_key) == (second_url, second_key)
    third_name = third_url.removeprefix("http://").replace(":", "-")
    if third_name == host_port:  # the same port again: a numbered name, still no overwrite
        third_name += "-2"
    third = read_profile(third_name, credentials)
    assert third is not None and third.api_key == third_key


async def test_serve_logs_json_lines_when_asked(tmp_path: Path) -> None:
    # before, the log was text only, and its level fixed at INFO
    apportion = Path(sys.executable).parent / "apportion"
    env = {
        **os.environ,
        "APPORTION_ADMIN_KEY": "a-key-for-the-json-log-test",
        "APPORTION_LOG_FORMAT": "json",
        "APPORTION_CREDENTIALS": str(tmp_path / "credentials"),
    }
    process = await asyncio.create_subprocess_exec(
        str(apportion), "serve", "--port", "0", "--ws-port", "0", "--data-dir",
        str(tmp_path / "data"), "--log-level", "info",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        entries = []
        for _ in range(200):  # until the server says as whom jobs run (it logs that at start)
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "the server ended before it logged"
            if line.startswith("{"):
                entries.append(json.loads(line))
                if entries[-1]["logger"] == "apportion.app":
                    break
        entry = entries[-1]
        assert set(entry) >= {"ts", "level", "logger", "message"}
        assert entry["ts"].endswith("+00:00") and entry["level"] in ("INFO", "WARNING")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


def test_serve_refuses_a_database_password_on_the_command_line(tmp_path: Path) -> None:
    env = {"APPORTION_DATA_DIR": str(tmp_path / "d"), "APPORTION_CREDENTIALS": str(tmp_path / "c")}
    url = "postgresql://apportion:a-db-password@127.0.0.1:5440/apportion"
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--db", url], env=env)
    assert result.exit_code == 2, result.output
    assert "a password in --db is refused" in result.stderr
    assert "APPORTION_DB" in result.stderr and "~/.pgpass" in result.stderr
    assert "a-db-password" not in result.output
    assert not (tmp_path / "d").exists()  # refused before anything started


@pytest.mark.parametrize("url", ["mysql://u:a-db-password@h/db", "postgresql+psycopg://u@h/d"])
def test_an_unsupported_database_url_is_refused_naming_the_option_and_no_password(
    tmp_path: Path, url: str
) -> None:
    env = {
        "APPORTION_DATA_DIR": str(tmp_path / "d"),
        "APPORTION_CREDENTIALS": str(tmp_path / "c"),
        "APPORTION_DB": url,
    }
    result = CliRunner().invoke(app, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 2, result.output
    assert "invalid option db: unsupported database URL scheme" in result.stderr
    assert "use sqlite:///path/to/apportion.db or postgresql://" in result.stderr
    assert "a-db-password" not in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("variable", "value", "module", "extra"),
    [
        ("APPORTION_DB", "postgresql://u@127.0.0.1:5440/d", "asyncpg", "postgresql"),
        ("APPORTION_REDIS_URL", "redis://127.0.0.1:6390/0", "redis", "redis"),
    ],
)
def test_a_missing_optional_driver_is_named_with_the_extra_that_installs_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    module: str,
    extra: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    env = {
        "APPORTION_DATA_DIR": str(tmp_path / "d"),
        "APPORTION_CREDENTIALS": str(tmp_path / "c"),
        "APPORTION_DB": "postgresql://u@127.0.0.1:5440/d",  # redis_url needs it
        variable: value,
    }
    result = CliRunner().invoke(app, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 2, result.output
    assert f"pip install 'apportion[{extra}]'" in result.stderr
    assert not (tmp_path / "d").exists()
