"""The package as a PyPI user gets it (issue 14, item 1): built from a clean clone, installed
into a fresh virtual environment, served from there, its dashboard driven in Chromium.

Before, ``python -m build`` and ``pip install .`` gave a wheel without the dashboard's browser
files: ``apportion serve`` started without a word and ``GET /`` answered 500. Now the build makes
them (``setup.py``: ``npm ci`` and ``web/copy-vendor.mjs`` from the lock file), from a checkout
and from the sdist alike. The clone is of the committed ``HEAD`` (what CI tests); the build and
the install use the package registries (npm, PyPI) as any user's would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ADMIN_KEY
from tests.dashboard_helpers import chromium, free_port, new_page, require_browser, sign_in

REPO = Path(__file__).resolve().parent.parent
VENDOR = "apportion/server/static/vendor/"


def run(*argv: str | Path, cwd: Path) -> None:
    subprocess.run([str(a) for a in argv], cwd=cwd, check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the sdist) built by ``python -m build`` in a clean clone of HEAD: the sdist
    first, then the wheel from the sdist, as PyPI's tools do."""
    if shutil.which("npm") is None or shutil.which("git") is None:
        reason = "building the wheel needs git and Node.js with npm"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("wheel")
    clone = work / "clone"
    run("git", "clone", "--quiet", REPO, clone, cwd=work)
    assert not (clone / "src" / VENDOR).exists()  # a clean clone has no browser files
    run(sys.executable, "-m", "build", "--outdir", work / "dist", clone, cwd=work)
    (wheel,) = (work / "dist").glob("*.whl")
    (sdist,) = (work / "dist").glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_and_the_sdist_carry_what_a_user_needs(built: tuple[Path, Path]) -> None:
    wheel, sdist = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in ("socket.io.min.js", "uPlot.iife.min.js", "uPlot.min.css"):
        assert VENDOR + name in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"LICENSE", "web/package-lock.json", "web/copy-vendor.mjs", "setup.py"} <= members


async def test_serve_from_the_installed_wheel_and_use_its_dashboard(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    require_browser()
    wheel, _ = built
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(
        venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{wheel}[server]", cwd=tmp_path
    )
    port, ws_port = free_port(), free_port()
    env = {
        **os.environ,
        "APPORTION_ADMIN_KEY": ADMIN_KEY,
        "APPORTION_CREDENTIALS": str(tmp_path / "credentials"),
        "APPORTION_UNSANDBOXED_POLICIES": "false",
    }
    env.pop("PYTHONPATH", None)
    server = await asyncio.create_subprocess_exec(  # the install's, away from the sources
        venv / "bin" / "apportion",
        "serve",
        "--port",
        str(port),
        "--ws-port",
        str(ws_port),
        "--data-dir",
        tmp_path / "data",
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):  # 60 s at most for the server to answer
                try:
                    async with http.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert server.returncode is None, "the server ended before it answered"
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the server installed from the wheel did not answer within 60 s")
            async with http.get(f"{url}/static/vendor/socket.io.min.js") as response:
                assert response.status == 200
        async with chromium() as browser:
            page, errors = await new_page(browser)
            await sign_in(page, url, ADMIN_KEY)  # live: the wheel's Socket.IO client connected
            assert "admin" in await page.locator("#whoami").inner_text()
            assert errors.errors == []
    finally:
        if server.returncode is None:
            server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            server.kill()
            await server.wait()


def test_a_client_only_install_has_the_cli_and_no_server_dependencies(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    # before, every install pulled the server's dependencies (numpy, SQLAlchemy, …)
    wheel, _ = built
    venv = tmp_path / "client"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    python, apportion = venv / "bin" / "python", venv / "bin" / "apportion"
    for module in ("numpy", "sqlalchemy", "aiosqlite", "psutil"):
        found = subprocess.run(
            [python, "-c", f"import importlib.util as u; print(u.find_spec({module!r}))"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert found.stdout.strip() == "None", module
    version = subprocess.run([apportion, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip()
    client = subprocess.run(
        [python, "-c", "from apportion.clients import Apportion, AsyncApportion; print('ok')"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert client.stdout.strip() == "ok"
    serve = subprocess.run([apportion, "serve"], capture_output=True, text=True, cwd=tmp_path)
    assert serve.returncode == 2 and "pip install 'apportion[server]'" in serve.stderr
