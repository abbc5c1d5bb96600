"""Who may see and change a record that has an owner: jobs and holds (allocations).

One rule, used by the REST routes (``GET /jobs``, ``/jobs/{id}``…, ``/allocations``…, the
dashboard's job list) and by :class:`~apportion.allocation.holds.HoldManager` (release, renew):
an admin key may act on every record; any other key only on the records it owns. A record
without an owner — made before API keys existed, or by the server itself — belongs to admins
only: it is visible to and changeable by admin keys alone.
"""

from __future__ import annotations


def may_act_on(owner: str | None, *, key_id: str | None, is_admin: bool) -> bool:
    """True when the key ``key_id`` (an admin key if ``is_admin``) may see or change a record
    owned by ``owner`` (``None``: owner-less, so admins only)."""
    return is_admin or (owner is not None and owner == key_id)
