"""REST routes of the cluster registry and metrics (CONTRACTS §4).

Scopes: reading needs ``read``; registering, replacing and deleting clusters
need ``admin``; pushing metrics needs ``submit`` (collectors hold such keys).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apportion.adapters.discovery import complete_from_scheduler
from apportion.errors import InvalidRequest
from apportion.server.auth import Scope
from apportion.server.http_common import ctx, json_body, json_response, ok, principal

routes = web.RouteTableDef()


async def _discovered(request: web.Request, body: Any) -> Any:
    """A Slurm cluster sent without nodes gets them from Slurm (CONTRACTS §4)."""
    jobs = ctx(request).jobs
    if jobs is None:
        return body
    return await complete_from_scheduler(body, jobs.driver.adapters)


@routes.get("/clusters")
async def list_clusters(request: web.Request) -> web.Response:
    """List every cluster document."""
    principal(request, Scope.READ)
    return json_response(ctx(request).registry.list_clusters())


@routes.post("/clusters")
async def create_cluster(request: web.Request) -> web.Response:
    """Register a cluster document; aggregates are computed or checked."""
    principal(request, Scope.ADMIN)
    body = await _discovered(request, await json_body(request))
    doc = await ctx(request).registry.create_cluster(body)
    return json_response(doc, status=201)


@routes.post("/clusters/query")
async def query_clusters(request: web.Request) -> web.Response:
    """Cluster documents matching ``{"query": <filter>}`` (a bare JSON array)."""
    principal(request, Scope.READ)
    body = await json_body(request)
    if "query" not in body:
        raise InvalidRequest('the body must be {"query": <filter>}', path="body.query")
    return json_response(ctx(request).registry.query_clusters(body["query"], path="body.query"))


@routes.get("/clusters/{cluster_id}")
async def read_cluster(request: web.Request) -> web.Response:
    """One cluster document."""
    principal(request, Scope.READ)
    return json_response(ctx(request).registry.get_cluster(request.match_info["cluster_id"]))


@routes.put("/clusters/{cluster_id}")
async def replace_cluster(request: web.Request) -> web.Response:
    """Replace a cluster document (the whole document)."""
    principal(request, Scope.ADMIN)
    body = await _discovered(request, await json_body(request))
    doc = await ctx(request).registry.replace_cluster(request.match_info["cluster_id"], body)
    return json_response(doc)


@routes.delete("/clusters/{cluster_id}")
async def delete_cluster(request: web.Request) -> web.Response:
    """Remove a cluster and its metrics."""
    principal(request, Scope.ADMIN)
    await ctx(request).registry.delete_cluster(request.match_info["cluster_id"])
    return json_response({"success": True})


@routes.put("/clusters/{cluster_id}/metrics")
async def put_metrics(request: web.Request) -> web.Response:
    """Push a cluster's metrics document."""
    principal(request, Scope.SUBMIT)
    doc = await ctx(request).registry.put_metrics(
        request.match_info["cluster_id"], await json_body(request)
    )
    return ok(doc)


@routes.get("/cluster/{cluster_id}")
async def get_metrics(request: web.Request) -> web.Response:
    """A cluster's metrics document, marked ``stale`` past the TTL (seed 004's metrics API)."""
    principal(request, Scope.READ)
    return ok(ctx(request).registry.get_metrics(request.match_info["cluster_id"]))


@routes.post("/cluster/query")
async def query_metrics(request: web.Request) -> web.Response:
    """Metrics documents matching a filter (the body is the filter, or ``{"query": filter}``)."""
    principal(request, Scope.READ)
    body = await json_body(request)
    query, path = (body["query"], "body.query") if set(body) == {"query"} else (body, "body")
    return ok(ctx(request).registry.query_metrics(query, path=path))
