"""Find (or start) the real single-host Slurm of ``scripts/slurm_up.sh`` for the tests.

Test modules import the fixture: ``from tests.slurm_env import slurm``. It yields a
:class:`SlurmCluster` when ``sinfo`` answers with ready nodes. Otherwise, when the Slurm binaries
are installed and we are root, it runs ``scripts/slurm_up.sh`` (idempotent; Slurm is left running
afterwards). Otherwise it skips with a message saying how to get Slurm — except under ``CI=true``,
where a missing Slurm fails the test instead: CI must run these tests, never skip them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UP_SCRIPT = REPO / "scripts" / "slurm_up.sh"
READY_STATES = ("idle", "mix", "mixed", "alloc", "allocated")


@dataclass(frozen=True)
class SlurmCluster:
    """The Slurm the tests run against: its ready nodes and the partition to use."""

    nodes: tuple[str, ...]
    partition: str


def _ready_nodes() -> tuple[str, ...]:
    """Nodes that ``sinfo`` reports ready in partition ``gpu`` (empty if Slurm is not up)."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return ()
    try:
        out = subprocess.run(
            [sinfo, "-h", "-N", "-p", "gpu", "-o", "%N %t"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if out.returncode != 0:
        return ()
    nodes = {
        parts[0]
        for parts in (line.split() for line in out.stdout.splitlines())
        if len(parts) == 2 and parts[1] in READY_STATES
    }
    return tuple(sorted(nodes))


def _start() -> str | None:
    """Run slurm_up.sh; None on success, else why it could not."""
    if os.geteuid() != 0:
        return "not root, so scripts/slurm_up.sh cannot start it"
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        return "the Slurm binaries are not installed"
    try:
        done = subprocess.run(
            ["bash", str(UP_SCRIPT)], capture_output=True, text=True, timeout=300, check=False
        )
    except subprocess.TimeoutExpired:
        return "scripts/slurm_up.sh did not finish within 300 s"
    if done.returncode != 0:
        return f"scripts/slurm_up.sh failed: {(done.stderr or done.stdout).strip()[-800:]}"
    return None


def find_or_start_slurm() -> SlurmCluster | str:
    """The running Slurm, after starting it if possible; or the reason there is none."""
    nodes = _ready_nodes()
    if len(nodes) >= 3:
        return SlurmCluster(nodes, "gpu")
    why = _start()
    nodes = _ready_nodes()
    if len(nodes) >= 3:
        return SlurmCluster(nodes, "gpu")
    return why or f"Slurm has {len(nodes)} ready nodes in partition gpu; the tests need 3"


def require_slurm() -> SlurmCluster:
    """The running Slurm; else ``pytest.skip`` — or ``pytest.fail`` when ``CI`` is ``true``."""
    found = find_or_start_slurm()
    if isinstance(found, str):
        message = f"Slurm is not installed: run scripts/slurm_up.sh ({found})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no Slurm: {message}")
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A real Slurm with >= 3 ready nodes (4 fake GPUs each) in partition ``gpu``."""
    yield require_slurm()
