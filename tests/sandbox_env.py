"""Whether the policy sandbox (``bwrap`` + the user ``apportion-sandbox``) can run here.

``JAIL_MISSING`` is None when it can, else why not (probed once, as the server probes at start).
The ``jailed`` fixture gives a test the jail's uid or, when there is none, skips with that
reason — except under ``CI=true``, where a missing sandbox fails the test: CI must run them.
:func:`unsandboxed_unless_jailed` is what ``conftest.server_settings`` adds so that, outside
CI on a machine without the sandbox, the server tests still run policies (unsandboxed).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apportion.policies.sandbox.jail import Jail, JailUnavailable, find_jail

POLICIES = Path(__file__).parent / "policies"
IN_CI = os.environ.get("CI") == "true"


def _probe() -> tuple[Jail | None, str | None]:
    try:
        return find_jail((POLICIES,)), None
    except JailUnavailable as exc:
        return None, str(exc)


JAIL, JAIL_MISSING = _probe()


def unsandboxed_unless_jailed() -> bool:
    """True only outside CI when no sandbox can run: the server tests then opt in."""
    return JAIL_MISSING is not None and not IN_CI


@pytest.fixture
def jailed() -> Jail:
    """The sandbox's jail; skips (fails under CI=true) when it cannot run here."""
    if JAIL is None:
        if IN_CI:
            pytest.fail(f"CI=true and the policy sandbox cannot run: {JAIL_MISSING}")
        pytest.skip(f"the policy sandbox cannot run here: {JAIL_MISSING}")
    return JAIL
