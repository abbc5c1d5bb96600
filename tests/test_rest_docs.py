"""The REST reference in docs/ is what the server serves, and every route is in the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

from apportion.tools.rest_docs import render
from tests.conftest import Running

DOC = Path(__file__).resolve().parent.parent / "docs" / "rest-api.md"


async def test_every_route_is_documented_and_the_reference_is_current(running: Running) -> None:
    async with running.http.get(f"{running.url}/openapi.json") as response:
        document = await response.json()
    assert document["openapi"].startswith("3.")
    for required in (
        "/jobs/submit",
        "/clusters/{cluster_id}",
        "/policies/{uri}/management",
        "/events",
    ):
        assert required in document["paths"]
    undocumented = [
        (method, path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if not operation["summary"]
    ]
    assert undocumented == [], "every handler needs a one-line docstring"
    assert DOC.read_text() == render(document), (
        "docs/rest-api.md is out of date: run python -m apportion.tools.rest_docs docs/rest-api.md"
    )
