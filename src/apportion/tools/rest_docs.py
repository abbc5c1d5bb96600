"""Write ``docs/rest-api.md`` from the served OpenAPI document.

Run ``python -m apportion.tools.rest_docs docs/rest-api.md``: it starts a throwaway server on
127.0.0.1:0 with a temporary data dir, reads ``GET /openapi.json`` (which lists every route
with its handler's docstring), and renders one table per top-level resource. A test checks
that the committed file is what this produces, so the reference never drifts from the code.
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
Every route needs `Authorization: Bearer <key>` except `/healthz`, `/metrics`, `/openapi.json`
and the dashboard's static files; errors are `{"success": false, "message", "error": {"code",
"details"}}` (see docs/allocation-protocol.md for the codes and statuses).
"""


def render(document: dict[str, Any]) -> str:
    """The Markdown reference for an OpenAPI document."""
    groups: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for path, operations in sorted(document["paths"].items()):
        group = path.strip("/").split("/", 1)[0] or "(root)"
        for method, operation in sorted(operations.items()):
            groups[group].append((method.upper(), path, operation.get("summary", "")))
    lines = [HEADER]
    for group in sorted(groups):
        lines.append(f"## `/{group}`\n" if group != "(root)" else "## `/`\n")
        lines.append("| method | path | what it does |")
        lines.append("|---|---|---|")
        for method, path, summary in groups[group]:
            cell = summary.replace("|", r"\|")
            lines.append(f"| {method} | `{path}` | {cell} |")
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
