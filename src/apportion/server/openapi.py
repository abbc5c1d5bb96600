"""The served OpenAPI 3.1 document, built from the route declarations.

:func:`openapi_document` is called by ``GET /openapi.json`` with every route table the app
serves (:class:`~apportion.server.routing.ApiRoutes`). Each operation comes from one
:class:`~apportion.server.routing.RouteSpec`: path parameters from the path template, query
parameters from the query model, the request body from the body model (or ``body_doc``), the
answers from the response type and the statuses of its error classes, ``security: []`` on
public routes. Schemas are pydantic's JSON Schemas (OpenAPI 3.1 uses JSON Schema 2020-12),
shared under ``components.schemas``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, TypeAdapter

from apportion import __version__
from apportion.errors import ApportionError
from apportion.server.routing import RouteSpec
from apportion.server.schemas import ErrorEnvelope

_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_REF = "#/components/schemas/{model}"


class _Components:
    """``components.schemas``, filled as operations are rendered."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def schema(self, annotation: Any) -> dict[str, Any]:
        """The JSON Schema of a type; a model becomes a ``$ref`` to its component."""
        schema = self.inline(TypeAdapter(annotation).json_schema(ref_template=_REF))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            self._add(annotation.__name__, schema)
            return {"$ref": _REF.format(model=annotation.__name__)}
        return schema

    def inline(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` without its ``$defs``, which move to the components."""
        for name, definition in schema.pop("$defs", {}).items():
            self._add(name, definition)
        return schema

    def _add(self, name: str, definition: dict[str, Any]) -> None:
        known = self.schemas.setdefault(name, definition)
        if known != definition:
            raise ValueError(f"two different schemas are named {name!r}; rename one model")


def openapi_path(path: str) -> str:
    """aiohttp's ``/static/{path:.+}`` → OpenAPI's ``/static/{path}``."""
    return _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def _parameters(spec: RouteSpec, components: _Components) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(spec.path)
    ]
    query_schema = components.inline(spec.query.model_json_schema(ref_template=_REF))
    properties = query_schema.get("properties", {})
    for name, info in spec.query.model_fields.items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": info.is_required(),
            "schema": properties[name],
        }
        if info.description:
            parameter["description"] = info.description
        if properties[name].get("type") == "array":
            parameter["style"], parameter["explode"] = "form", True
        out.append(parameter)
    return out


def _request_body(spec: RouteSpec, components: _Components) -> dict[str, Any] | None:
    model = spec.body if spec.body is not None else spec.body_doc
    if model is None:
        return None
    return {"required": True, "content": {spec.body_media: {"schema": components.schema(model)}}}


def _responses(spec: RouteSpec, components: _Components) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, description in sorted(spec.success.items()):
        if spec.response is None:
            content = {spec.response_media: {"schema": {"type": "string"}}}
        else:
            content = {spec.response_media: {"schema": components.schema(spec.response)}}
        responses[str(status)] = {"description": description, "content": content}
    by_status: dict[int, list[type[ApportionError]]] = defaultdict(list)
    for cls in spec.error_classes:
        by_status[cls.http_status].append(cls)
    envelope = {"application/json": {"schema": components.schema(ErrorEnvelope)}}
    for status, classes in sorted(by_status.items()):
        names = ", ".join(dict.fromkeys(cls.code.value for cls in classes))
        responses[str(status)] = {"description": f"error envelope: {names}", "content": envelope}
    responses.setdefault(
        "500", {"description": "error envelope: Internal (see the server log)", "content": envelope}
    )
    return dict(sorted(responses.items()))


def _operation(spec: RouteSpec, components: _Components) -> dict[str, Any]:
    description = (spec.handler.__doc__ or "").strip()
    if spec.public:
        needs = "No key needed."
    elif spec.scope is None:
        needs = "Needs any valid API key."
    else:
        needs = f"Needs a key with scope `{spec.scope.value}` (or `admin`)."
    operation: dict[str, Any] = {
        "operationId": spec.handler.__name__,
        "summary": spec.summary,
        "description": f"{description}\n\n{needs}".strip(),
        "tags": [spec.tag],
        "parameters": _parameters(spec, components),
        "responses": _responses(spec, components),
    }
    body = _request_body(spec, components)
    if body is not None:
        operation["requestBody"] = body
    if spec.public:
        operation["security"] = []
    elif spec.scope is not None:
        operation["x-apportion-scope"] = spec.scope.value
    return operation


def openapi_document(specs: Iterable[RouteSpec]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the declared routes (deterministic: sorted paths)."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        operations = paths.setdefault(openapi_path(spec.path), {})
        operations[spec.method.lower()] = _operation(spec, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Apportion",
            "version": __version__,
            "description": "Policy-driven GPU allocation: REST API (CONTRACTS §2–§7).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(components.schemas.items())),
        },
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
