"""REST routes of the cluster registry and metrics (CONTRACTS §4).

Scopes: reading needs ``read``; registering, replacing and deleting clusters
need ``admin``; pushing metrics needs ``submit`` (collectors hold such keys).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apportion.adapters.discovery import complete_from_scheduler
from apportion.errors import Conflict, InvalidDocument, NotFound
from apportion.server.auth import Scope
from apportion.server.http_common import ctx, json_body, json_response, ok
from apportion.server.routing import ApiRoutes, body_of
from apportion.server.schemas import Ack, DataAnswer, Document, FilterQuery

api = ApiRoutes("registry")


async def _discovered(request: web.Request, body: Any) -> Any:
    """A Slurm cluster sent without nodes gets them from Slurm (CONTRACTS §4)."""
    return await complete_from_scheduler(body, ctx(request).adapters)


@api.get("/clusters", scope=Scope.READ, response=list[Document])
async def list_clusters(request: web.Request) -> web.Response:
    """List every cluster document."""
    return json_response(ctx(request).registry.list_clusters())


@api.post(
    "/clusters",
    scope=Scope.ADMIN,
    body_doc=Document,
    response=Document,
    status=201,
    errors=(Conflict, InvalidDocument),
)
async def create_cluster(request: web.Request) -> web.Response:
    """Register a cluster document; aggregates are computed or checked."""
    body = await _discovered(request, await json_body(request))
    doc = await ctx(request).registry.create_cluster(body)
    return json_response(doc, status=201)


@api.post("/clusters/query", scope=Scope.READ, body=FilterQuery, response=list[Document])
async def query_clusters(request: web.Request) -> web.Response:
    """Cluster documents matching ``{"query": <filter>}`` (a bare JSON array)."""
    query = body_of(request, FilterQuery).query
    return json_response(ctx(request).registry.query_clusters(query, path="body.query"))


@api.get("/clusters/{cluster_id}", scope=Scope.READ, response=Document, errors=(NotFound,))
async def read_cluster(request: web.Request) -> web.Response:
    """One cluster document."""
    return json_response(ctx(request).registry.get_cluster(request.match_info["cluster_id"]))


@api.put(
    "/clusters/{cluster_id}",
    scope=Scope.ADMIN,
    body_doc=Document,
    response=Document,
    errors=(NotFound, InvalidDocument),
)
async def replace_cluster(request: web.Request) -> web.Response:
    """Replace a cluster document (the whole document)."""
    body = await _discovered(request, await json_body(request))
    doc = await ctx(request).registry.replace_cluster(request.match_info["cluster_id"], body)
    return json_response(doc)


@api.delete("/clusters/{cluster_id}", scope=Scope.ADMIN, response=Ack, errors=(NotFound,))
async def delete_cluster(request: web.Request) -> web.Response:
    """Remove a cluster and its metrics."""
    await ctx(request).registry.delete_cluster(request.match_info["cluster_id"])
    return json_response({"success": True})


@api.put(
    "/clusters/{cluster_id}/metrics",
    scope=Scope.SUBMIT,
    body_doc=Document,
    response=DataAnswer,
    errors=(NotFound, InvalidDocument),
)
async def put_metrics(request: web.Request) -> web.Response:
    """Push a cluster's metrics document."""
    doc = await ctx(request).registry.put_metrics(
        request.match_info["cluster_id"], await json_body(request)
    )
    return ok(doc)


@api.get("/cluster/{cluster_id}", scope=Scope.READ, response=DataAnswer, errors=(NotFound,))
async def get_metrics(request: web.Request) -> web.Response:
    """A cluster's metrics document, marked ``stale`` past the TTL (seed 004's metrics API)."""
    return ok(ctx(request).registry.get_metrics(request.match_info["cluster_id"]))


@api.post("/cluster/query", scope=Scope.READ, body_doc=Document, response=DataAnswer)
async def query_metrics(request: web.Request) -> web.Response:
    """Metrics documents matching a filter (the body is the filter, or ``{"query": filter}``)."""
    body = await json_body(request)
    query, path = (body["query"], "body.query") if set(body) == {"query"} else (body, "body")
    return ok(ctx(request).registry.query_metrics(query, path=path))
