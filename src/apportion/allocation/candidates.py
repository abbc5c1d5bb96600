"""Which clusters a request may be placed on (CONTRACTS §2 and §5).

``clusters`` (ids; an unknown id is an error) if non-empty; else ``filter`` (any accepted
wrapper); else ``search`` (filter, then rank with a ranking policy, keep the first ``return``);
else every cluster whose ``status`` is ``live`` or absent.
"""

from __future__ import annotations

from typing import Any

from apportion.allocation.messages import AllocationRequest
from apportion.errors import InvalidRequest
from apportion.policies.runtime import PolicyRuntime
from apportion.policies.store import PolicyStore
from apportion.policies.uri import PolicyURI
from apportion.registry.service import Registry, require_known


def _object(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{path} must be an object", path=path)
    return value


class CandidateFinder:
    """Resolves a request's candidates against the registry (and the ranking policies)."""

    def __init__(self, registry: Registry, policies: PolicyStore, runtime: PolicyRuntime) -> None:
        self._registry = registry
        self._policies = policies
        self._runtime = runtime

    async def for_request(self, request: AllocationRequest) -> list[str]:
        """The request's candidate cluster ids, in a deterministic order."""
        if request.clusters:
            require_known(self._registry, request.clusters, path="clusters")
            return list(dict.fromkeys(request.clusters))
        if request.filter:
            ids = self._registry.filter_cluster_ids(request.filter, path="filter")
            if ids is not None:
                return ids
        if request.search:
            return await self.search(request.search, path="search")
        return self._registry.live_cluster_ids()

    async def search(self, spec: dict[str, Any], *, path: str = "search") -> list[str]:
        """Filter, then order the survivors with the ranking policy; the first ``return`` K.

        ``spec`` is the search envelope, bare or inside the parser's ``{"body": {"values": …}}``;
        the ranking policy gets the surviving cluster documents, each with its metrics under
        ``cluster_metrics``, and returns them (or their ids) best first."""
        if "body" in spec:
            body = _object(spec["body"], f"{path}.body")
            spec, path = _object(body.get("values"), f"{path}.body.values"), f"{path}.body.values"
        rule_path = f"{path}.rankingPolicyRule"
        rule = spec.get("rankingPolicyRule")
        if not isinstance(rule, dict):
            raise InvalidRequest(
                f"{rule_path} is required and must be an object with policyRuleURI",
                path=rule_path,
            )
        uri = str(PolicyURI.parse(rule.get("policyRuleURI"), path=f"{rule_path}.policyRuleURI"))
        parameters = _object(rule.get("parameters"), f"{rule_path}.parameters")
        settings = _object(rule.get("settings"), f"{rule_path}.settings")
        limit = parameters.get("return")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise InvalidRequest(
                f"{rule_path}.parameters.return must be a positive integer",
                path=f"{rule_path}.parameters.return",
            )
        ids = self._registry.filter_cluster_ids(
            parameters.get("filterRule"), path=f"{rule_path}.parameters.filterRule"
        )
        if ids is None:
            ids = self._registry.live_cluster_ids()
        documents = [
            {
                **self._registry.get_cluster(cid),
                "cluster_metrics": self._registry.get_metrics_or_none(cid),
            }
            for cid in ids
        ]
        evaluation = await self._runtime.evaluate(
            self._policies.get(uri), input_data=documents, parameters=parameters, settings=settings
        )
        output = evaluation.output
        ranked = output if isinstance(output, list) else [output]
        known, out = set(ids), list[str]()
        for item in ranked:
            cid = item.get("id") if isinstance(item, dict) else item
            if isinstance(cid, str) and cid in known and cid not in out:
                out.append(cid)
        return out[:limit] if limit else out
