"""Write ``docs/rest-api.md`` from the served OpenAPI document.

Run ``python -m apportion.tools.rest_docs docs/rest-api.md``: it starts a throwaway server on
127.0.0.1:0 with a temporary data dir, reads ``GET /openapi.json`` (built from the route
declarations: scopes, query parameters, bodies, statuses) and renders one table per top-level
resource. A test checks that the committed file is what this produces, so the reference never
drifts from the code.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from apportion.app import Server
from apportion.config import Settings

HEADER = """# REST API reference

Generated from the served OpenAPI document (`GET /openapi.json`) by
`python -m apportion.tools.rest_docs docs/rest-api.md`; do not edit by hand.
Every route needs `Authorization: Bearer <key>` except those whose key column says `public`;
a key's scope must be the one shown, or `admin` (every scope may `read`; `any` is any valid
key; docs/security.md says what each scope may do and see). Errors are `{"success": false, "message", "error": {"code", "details"}}` (see
docs/allocation-protocol.md for the codes); the statuses column lists every status a route
answers, success first. Unknown query parameters and body fields are refused with 400 naming
them. The document itself has the schemas of every query, body and answer.
"""


def _key(operation: dict[str, Any]) -> str:
    if operation.get("security") == []:
        return "public"
    return str(operation.get("x-apportion-scope", "any"))


def _query(operation: dict[str, Any]) -> str:
    names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
    return ", ".join(f"`{n}`" for n in names)


def render(document: dict[str, Any]) -> str:
    """The Markdown reference for an OpenAPI document."""
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = defaultdict(list)
    for path, operations in sorted(document["paths"].items()):
        group = path.strip("/").split("/", 1)[0] or "(root)"
        for method, operation in sorted(operations.items()):
            groups[group].append((method.upper(), path, operation))
    lines = [HEADER]
    for group in sorted(groups):
        lines.append(f"## `/{group}`\n" if group != "(root)" else "## `/`\n")
        lines.append("| method | path | key | what it does | query | statuses |")
        lines.append("|---|---|---|---|---|---|")
        for method, path, operation in groups[group]:
            cell = operation.get("summary", "").replace("|", r"\|")
            statuses = ", ".join(operation.get("responses", {}))
            lines.append(
                f"| {method} | `{path}` | {_key(operation)} | {cell} | {_query(operation)} "
                f"| {statuses} |"
            )
        lines.append("")
    return "\n".join(lines)


async def served_document() -> dict[str, Any]:
    """The OpenAPI document of a throwaway server."""
    with tempfile.TemporaryDirectory(prefix="apportion-docs-") as folder:
        server = Server(
            Settings(
                port=0,
                ws_port=0,
                data_dir=Path(folder),
                admin_key="docs-generator-key-0123456789",
                write_credentials=False,
                sandbox_workers=1,
            )
        )
        await server.start()
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/openapi.json") as r:
                document: dict[str, Any] = await r.json()
                return document
        finally:
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render(asyncio.run(served_document()))
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
