"""REST routes of the policy store (CONTRACTS §3).

``POST /policies`` takes ``multipart/form-data``: a part ``record`` (JSON) and
a part ``code`` (an archive or a single ``.py`` file). Uploading and deleting
need ``admin``; management actions need ``admin``; reading needs ``read``.

A successful upload or deletion is recorded as the event ``policy_updated``
``{"policy_rule_uri", "change": "created" | "deleted"}`` (the shape of ``cluster_updated``),
through the server's event log, so the dashboard's policy list refreshes (the policy-dir
watcher announces its hot reloads the same way, with ``"replaced"`` too).
"""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import BadHttpMessage

from apportion import jsonutil
from apportion.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    PolicyError,
    PolicyTimeout,
    UnknownPolicy,
)
from apportion.policies.uri import PolicyURI
from apportion.server.auth import Scope
from apportion.server.http_common import ctx, json_response, ok, within_body_deadline
from apportion.server.routes_status import STATUS
from apportion.server.routing import ApiRoutes, body_of
from apportion.server.schemas import Ack, DataAnswer, ManagementCall, PolicyUploadForm, StoredPolicy

api = ApiRoutes("policies")

MAX_CODE_BYTES = 20 * 2**20


@api.get("/policies", scope=Scope.READ, response=list[StoredPolicy])
async def list_policies(request: web.Request) -> web.Response:
    """Every policy record, built-ins included, with its URI and source."""
    return json_response([entry.public() for entry in ctx(request).policies.list()])


async def _read_upload(request: web.Request) -> tuple[Any, bytes, str]:
    mimetype = parse_mimetype(request.headers.get("Content-Type", ""))
    if mimetype.type != "multipart" or not mimetype.parameters.get("boundary"):
        raise InvalidRequest(
            "POST /policies takes multipart/form-data (with its boundary parameter) with a part"
            " 'record' (JSON) and a part 'code' (.zip, .tar.gz, .tar.xz or .py)",
            path="body",
        )
    try:
        return await within_body_deadline(request, _read_parts(request))
    except BadHttpMessage as exc:  # a malformed part header (a NUL, a bad line): the client's
        raise InvalidRequest(
            f"the multipart body is malformed ({exc.message}); send a form with parts "
            "'record' and 'code'",
            path="body",
        ) from None


async def _read_parts(request: web.Request) -> tuple[Any, bytes, str]:
    record: Any = None
    code: bytes | None = None
    filename = ""
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "record":
            record = jsonutil.loads(await part.read(decode=False))
        elif part.name == "code":
            filename = part.filename or ""
            code = bytes(await part.read(decode=False))
            if len(code) > MAX_CODE_BYTES:
                raise InvalidRequest(
                    f"code is over {MAX_CODE_BYTES} bytes; upload a smaller archive", path="code"
                )
        else:
            raise InvalidRequest(
                f"unknown form part {part.name!r}; send 'record' and 'code'", path=str(part.name)
            )
    if record is None:
        raise InvalidRequest(
            "the form part 'record' (the policy record as JSON) is missing", path="record"
        )
    if code is None or not filename:
        raise InvalidRequest(
            "the form part 'code' with a filename (.zip, .tar.gz, .tar.xz or .py) is missing",
            path="code",
        )
    return record, code, filename


@api.post(
    "/policies",
    scope=Scope.POLICIES,
    body_doc=PolicyUploadForm,
    body_media="multipart/form-data",
    response=StoredPolicy,
    status=201,
    errors=(Conflict, PolicyError, PolicyTimeout),
)
async def upload_policy(request: web.Request) -> web.Response:
    """Store a new policy version (a ``policies`` or admin key); versions are immutable."""
    record, code, filename = await _read_upload(request)
    context = ctx(request)
    entry = await context.policies.upload(record, code, filename, check=context.runtime.check)
    await _policy_updated(request, entry.uri, "created")
    return json_response(entry.public(), status=201)


async def _policy_updated(request: web.Request, uri: str, change: str) -> None:
    await request.app[STATUS].events.append(
        "policy_updated", {"policy_rule_uri": uri, "change": change}
    )


@api.get("/policies/{uri}", scope=Scope.READ, response=StoredPolicy, errors=(UnknownPolicy,))
async def read_policy(request: web.Request) -> web.Response:
    """One policy record."""
    uri = str(PolicyURI.parse(request.match_info["uri"], path="uri"))
    return json_response(ctx(request).policies.get(uri).public())


@api.delete("/policies/{uri}", scope=Scope.ADMIN, response=Ack, errors=(UnknownPolicy, Forbidden))
async def delete_policy(request: web.Request) -> web.Response:
    """Delete an uploaded policy version (built-ins and policy-dir policies cannot be deleted)."""
    uri = str(PolicyURI.parse(request.match_info["uri"], path="uri"))
    await ctx(request).policies.delete(uri)
    await _policy_updated(request, uri, "deleted")
    return json_response({"success": True})


@api.post(
    "/policies/{uri}/management",
    scope=Scope.ADMIN,
    body=ManagementCall,
    response=DataAnswer,
    errors=(UnknownPolicy, PolicyError, PolicyTimeout),
)
async def manage_policy(request: web.Request) -> web.Response:
    """Call the policy's ``management(action, data)``."""
    body = body_of(request, ManagementCall)
    answer = await ctx(request).allocations.management(
        request.match_info["uri"], body.action, body.data
    )
    return ok(answer["data"])
