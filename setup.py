"""Build hook: the dashboard's browser files ship inside every wheel.

The metadata is in pyproject.toml; this file only adds one step to ``build_py``. The dashboard
loads the Socket.IO client and uPlot, which come from the npm registry through
``web/package-lock.json`` and are copied into ``src/apportion/server/static/vendor/`` by
``web/copy-vendor.mjs`` (not committed). When they are missing — a clean checkout, or the
sdist — the build runs ``npm ci`` and the copy itself, so ``pip install .``, ``python -m build``
and a build from the sdist all give a wheel with a working dashboard. Without Node.js and npm
the build stops and says what to install, rather than ship a dashboard that answers 500.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
VENDOR = ROOT / "src" / "apportion" / "server" / "static" / "vendor"
# what web/copy-vendor.mjs writes (it writes all of them or fails)
VENDOR_FILES = (
    "socket.io.min.js",
    "socket.io-client.LICENSE",
    "uPlot.iife.min.js",
    "uPlot.min.css",
    "uplot.LICENSE",
)


class BuildPyWithDashboard(build_py):
    """``build_py`` that first makes the dashboard's vendor files when any is missing."""

    def run(self) -> None:
        if not all((VENDOR / name).is_file() for name in VENDOR_FILES):
            npm, node = shutil.which("npm"), shutil.which("node")
            if npm is None or node is None:
                raise SystemExit(
                    "building Apportion needs Node.js and npm for the dashboard's browser files"
                    " (web/package-lock.json): install them (Debian: apt-get install nodejs npm)"
                    " and build again"
                )
            # fixed argv lists, no shell
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)  # noqa: S603
            subprocess.run([node, "copy-vendor.mjs"], cwd=WEB, check=True)  # noqa: S603
        super().run()


setup(cmdclass={"build_py": BuildPyWithDashboard})
