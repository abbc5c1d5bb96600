"""The registry, policy-store, account and key calls of :class:`AsyncApportion` over REST.
A mixin: it needs ``self._rest`` (a :class:`RestTransport`)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from apportion import jsonutil
from apportion.clients.errors import NotFoundError
from apportion.clients.models import Account, AccountShare, Cluster, Policy
from apportion.clients.policy_pack import prepare_upload
from apportion.clients.rest import RestTransport


class RegistryAPI:
    """Clusters, metrics, policies, accounts and keys; mixed into
    :class:`~apportion.clients.AsyncApportion`."""

    _rest: RestTransport

    # ------------------------------------------------------------------ registry
    async def clusters(self) -> list[Cluster]:
        """Every cluster document."""
        return [Cluster.model_validate(c) for c in await self._rest.call("GET", "/clusters")]

    async def fleet(self) -> dict[str, Any]:
        """Every cluster, node and GPU with its state (``GET /fleet``: ``free``, ``held``,
        ``job``, ``busy``, ``stale``; GPUs as rows of ``gpu_fields``)."""
        result: dict[str, Any] = await self._rest.call("GET", "/fleet")
        return result

    async def cluster(self, cluster_id: str) -> Cluster:
        """One cluster document; :class:`NotFoundError` when unknown."""
        return Cluster.model_validate(await self._rest.call("GET", f"/clusters/{cluster_id}"))

    async def register_cluster(
        self, document: Mapping[str, Any], *, replace: bool = False
    ) -> Cluster:
        """Register a cluster (admin). With ``replace`` an existing id is replaced instead of
        answered with :class:`ConflictError`. A Slurm cluster without nodes is discovered."""
        doc = dict(document)
        if replace and "id" in doc:
            try:
                await self._rest.call("GET", f"/clusters/{doc['id']}")
            except NotFoundError:
                pass
            else:
                return Cluster.model_validate(
                    await self._rest.call("PUT", f"/clusters/{doc['id']}", json=doc)
                )
        return Cluster.model_validate(await self._rest.call("POST", "/clusters", json=doc))

    async def delete_cluster(self, cluster_id: str) -> None:
        """Remove a cluster and its metrics (admin)."""
        await self._rest.call("DELETE", f"/clusters/{cluster_id}")

    async def query_clusters(self, query: Mapping[str, Any]) -> list[Cluster]:
        """Clusters matching a filter (CONTRACTS §5)."""
        raw = await self._rest.call("POST", "/clusters/query", json={"query": dict(query)})
        return [Cluster.model_validate(c) for c in raw]

    async def metrics(self, cluster_id: str) -> dict[str, Any]:
        """A cluster's metrics document (``stale: true`` past the TTL)."""
        result: dict[str, Any] = await self._rest.data("GET", f"/cluster/{cluster_id}")
        return result

    async def push_metrics(self, cluster_id: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """Push a metrics document (a ``submit`` key suffices)."""
        path = f"/clusters/{cluster_id}/metrics"
        result: dict[str, Any] = await self._rest.data("PUT", path, json=dict(document))
        return result

    async def export_snapshot(self) -> dict[str, Any]:
        """``{"clusters": [...], "metrics": {id: doc}}``: what ``policies test`` runs against."""
        clusters = await self._rest.call("GET", "/clusters")
        metrics: dict[str, Any] = {}
        for doc in clusters:
            with contextlib.suppress(NotFoundError):
                metrics[doc["id"]] = await self.metrics(doc["id"])
        return {"clusters": clusters, "metrics": metrics}

    # ------------------------------------------------------------------ policies
    async def policies(self) -> list[Policy]:
        """Every policy record, built-ins included."""
        return [Policy.model_validate(p) for p in await self._rest.call("GET", "/policies")]

    async def policy(self, uri: str) -> Policy:
        """One policy record; :class:`NotFoundError` (``UnknownPolicy``) when unknown."""
        return Policy.model_validate(await self._rest.call("GET", f"/policies/{uri}"))

    async def upload_policy(
        self, source: str | Path, record: Mapping[str, Any] | None = None
    ) -> Policy:
        """Upload a policy folder (packed as .tar.gz in memory; ``policy.json`` is its record)
        or an archive file (``record`` required). Versions are immutable: an existing URI is
        :class:`ConflictError`; a policy that fails to load is :class:`InvalidRequestError`."""
        upload = prepare_upload(Path(source), dict(record) if record else None)
        form = aiohttp.FormData()
        form.add_field("record", jsonutil.dumps_str(upload.record), content_type="application/json")
        form.add_field(
            "code", upload.code, filename=upload.filename, content_type="application/octet-stream"
        )
        response = await self._rest.send("POST", "/policies", data=form)
        return Policy.model_validate(response.json())

    async def delete_policy(self, uri: str) -> None:
        """Delete an uploaded policy version (admin)."""
        await self._rest.call("DELETE", f"/policies/{uri}")

    async def manage_policy(
        self, uri: str, action: str, data: Mapping[str, Any] | None = None
    ) -> Any:
        """``management(action, data)`` over REST (admin); same answer as :meth:`management`."""
        body = {"action": action, "data": dict(data or {})}
        return await self._rest.data("POST", f"/policies/{uri}/management", json=body)

    # ------------------------------------------------------------------ keys
    async def create_key(
        self,
        name: str,
        scope: str = "submit",
        *,
        account: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Create an API key (admin) acting for ``account`` (default: ``default``) and naming
        ``user`` (default: ``name``); the answer's ``api_key`` is shown this once."""
        body: dict[str, Any] = {"name": name, "scope": scope}
        if account is not None:
            body["account"] = account
        if user is not None:
            body["user"] = user
        result: dict[str, Any] = await self._rest.data("POST", "/keys", json=body)
        return result

    async def keys(self) -> list[dict[str, Any]]:
        """Every key, without secrets (admin)."""
        result: list[dict[str, Any]] = await self._rest.data("GET", "/keys")
        return result

    # ------------------------------------------------------------------ accounts
    async def accounts(self) -> list[Account]:
        """Every account (an operator or admin key)."""
        return [Account.model_validate(a) for a in await self._rest.data("GET", "/accounts")]

    async def create_account(
        self, name: str, *, os_user: str | None = None, description: str = "", shares: int = 1
    ) -> Account:
        """Create an account (admin) whose jobs run as ``os_user`` (default: the server's
        ``job_user``), with ``shares`` of the fleet (its fair-share weight);
        :class:`ConflictError` when the name is taken."""
        body: dict[str, Any] = {"name": name, "description": description, "shares": shares}
        if os_user is not None:
            body["os_user"] = os_user
        return Account.model_validate(await self._rest.data("POST", "/accounts", json=body))

    async def set_shares(self, account: str, shares: int) -> Account:
        """Change an account's fair-share shares (admin)."""
        answer = await self._rest.data("PATCH", f"/accounts/{account}", json={"shares": shares})
        return Account.model_validate(answer)

    async def fair_share(self) -> list[AccountShare]:
        """Each account's shares, decayed usage and fair-share factor (``sshare``); a key
        sees its own account's, an operator or admin key every account's."""
        return [AccountShare.model_validate(a) for a in await self._rest.call("GET", "/share")]

    async def revoke_key(
        self, key_id: str, *, allow_self: bool = False, allow_last_admin: bool = False
    ) -> None:
        """Revoke a key now (admin); :class:`NotFoundError` for an unknown id. The server
        refuses (Conflict) to revoke the calling key without ``allow_self`` and the last active
        admin key without ``allow_last_admin``."""
        flags = {"allow_self": allow_self, "allow_last_admin": allow_last_admin}
        params = {name: "true" for name, given in flags.items() if given}
        await self._rest.call("DELETE", f"/keys/{key_id}", params=params)
