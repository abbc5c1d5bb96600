"""The first admin key: the operator's (``APPORTION_ADMIN_KEY``, ``--admin-key-file``), or one
generated on first start.

Called once by :meth:`apportion.app.Server.start` after the HTTP and WebSocket ports are bound
(the credentials profile records both URLs). With auth off nothing happens; an operator's key is
stored (idempotently) under the admin scope; otherwise, if no admin key exists yet, one is
created, shown once on stderr and — unless ``write_credentials`` is off — saved to the
credentials file (mode 0600) as profile ``default``, or, when the file has that profile already
(another server's), as a new profile named after this server's address — never replacing one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from apportion.config import Settings
from apportion.server.auth import Scope
from apportion.server.credentials import Profile, add_profile, default_credentials_path
from apportion.server.keys import KeyStore


@dataclass(frozen=True)
class BootstrapKey:
    """The admin key generated on first start (shown once)."""

    secret: str
    credentials_path: str | None


async def ensure_admin_key(
    settings: Settings, keys: KeyStore, *, url: str, ws_url: str
) -> BootstrapKey | None:
    """Make sure an admin key exists; return the one generated now, if any."""
    if not settings.auth:
        return None
    if settings.admin_key:
        await keys.ensure_key(settings.admin_key, name="admin (given at start)", scope=Scope.ADMIN)
        return None
    if await keys.has_admin():
        return None
    issued = await keys.create("bootstrap admin", Scope.ADMIN)
    path = None
    saved = ""
    if settings.write_credentials:
        target = settings.credentials_file or default_credentials_path()
        profile = Profile(url=url, ws_url=ws_url, api_key=issued.secret)
        name, written = add_profile(profile, target)
        path = str(written)
        use = "" if name == "default" else f"; use it with `apportion --profile {name} …`"
        saved = f"\napportion: saved to {path} (profile '{name}', mode 0600){use}"
    print(
        f"apportion: generated the first admin key (shown once): {issued.secret}{saved}",
        file=sys.stderr,
    )
    return BootstrapKey(issued.secret, path)
