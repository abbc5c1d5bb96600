"""Helpers for the dashboard's browser tests: Debian's Chromium driven by Playwright (async API).

Chromium is ``/usr/bin/chromium`` (never a downloaded browser: ``playwright install`` is never
run). Without Chromium or Playwright the browser tests skip and say how to install them, except
under ``CI=true``, where they fail instead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from apportion.server.dashboard import missing_vendor_files

CHROMIUM = os.environ.get("APPORTION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 30_000  # a generous deadline for every wait: a loaded machine renders slowly


def unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: pip install playwright (the dev extras have it)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (
            f"Chromium is not at {CHROMIUM}: apt-get install -y --no-install-recommends chromium "
            "(as root; `make test` does it where it can)"
        )
    missing = missing_vendor_files()
    if missing:
        return (
            f"the dashboard's npm files are missing ({', '.join(missing)}): "
            "cd web && npm ci && node copy-vendor.mjs (`make test` does it)"
        )
    return None


def require_browser() -> None:
    """Skip with the reason, or fail under CI=true (CI must run the browser tests)."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the browser tests cannot run: {reason}")
    pytest.skip(reason)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Debian Chromium, closed afterwards."""
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


class PageErrors:
    """Collects uncaught JavaScript errors of a page; tests assert there were none."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))


async def new_page(browser: Any, viewport: dict[str, int] = DESKTOP) -> tuple[Any, PageErrors]:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page, PageErrors(page)


async def sign_in(page: Any, url: str, key: str) -> None:
    """Open the dashboard, paste ``key`` into the sign-in form and wait for the page to be live."""
    await page.goto(url + "/")
    await page.fill("#key-input", key)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_selector("#nav:not([hidden])")
    await wait_live(page)


async def wait_live(page: Any) -> None:
    """Wait until the Socket.IO connection is up and replayed (the badge says "live")."""
    await page.wait_for_selector('#conn[data-state="live"]')


async def screenshot(page: Any, name: str) -> Path:
    """Write ``test-artifacts/screenshots/<name>.png`` (not committed) for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server restarted on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
