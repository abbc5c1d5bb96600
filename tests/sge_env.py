"""Find (or start) the real single-host Son of Grid Engine of ``scripts/sge_up.sh`` for the
tests. Test modules import the fixture: ``from tests.sge_env import sge``. It yields an
:class:`SgeCell` when ``qstat -f`` lists the queue ``all.q``; otherwise, as root, it runs
``scripts/sge_up.sh`` (idempotent; SGE is left running, ``.ci/run`` stops it); otherwise it skips
saying how to get SGE — except under ``CI=true``, where a missing SGE fails the test. SGE runs
jobs of ordinary users only (not root's): the tests submit as the job user, so they need root
and ``scripts/tenant_user.sh``'s user too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apportion.adapters.base import RunAs
from tests.jobs_helpers import job_user, why_no_job_user

REPO = Path(__file__).resolve().parent.parent
UP_SCRIPT = REPO / "scripts" / "sge_up.sh"
SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}


@dataclass(frozen=True)
class SgeCell:
    """The SGE the tests run against: this host's name, and the user jobs run as."""

    host: str
    run_as: RunAs


def _ready() -> bool:
    qstat = shutil.which("qstat")
    if qstat is None:
        return False
    try:
        out = subprocess.run(
            [qstat, "-f"], capture_output=True, text=True, timeout=15, check=False,
            env={**os.environ, **SGE_ENV},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(
        line.startswith("all.q@") for line in out.stdout.splitlines()
    )


def _start() -> str | None:
    """Run sge_up.sh; None on success, else why it could not."""
    if os.geteuid() != 0:
        return "not root, so scripts/sge_up.sh cannot start it"
    try:
        done = subprocess.run(
            ["bash", str(UP_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        return "scripts/sge_up.sh did not finish within 600 s"
    if done.returncode != 0:
        return f"scripts/sge_up.sh failed: {(done.stderr or done.stdout).strip()[-800:]}"
    return None


def require_sge() -> SgeCell:
    """The running SGE; else ``pytest.skip`` — or ``pytest.fail`` when ``CI`` is ``true``."""
    why = None if _ready() else _start()
    missing = why_no_job_user()  # the tests submit SGE jobs as the job user
    run_as = None if missing else job_user()
    if missing is not None:
        why = why or missing
    elif not _ready():
        why = why or "qstat -f lists no queue all.q"
    if why is not None or run_as is None:
        message = f"no SGE to test against: run scripts/sge_up.sh as root ({why})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return SgeCell(os.uname().nodename, run_as)


@pytest.fixture(scope="session")
def sge() -> Iterator[SgeCell]:
    """A real SGE cell with queue all.q on this host."""
    yield require_sge()
