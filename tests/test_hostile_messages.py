"""Every message of the hostile corpus gets its documented code, and the connection stays usable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Running, allocation, ask

CORPUS = json.loads((Path(__file__).parent / "hostile" / "messages.json").read_text())


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
async def test_hostile_message(running: Running, fleet: Any, case: dict[str, Any]) -> None:
    raw = case["raw"] if "raw" in case else json.dumps(case["message"])
    async with running.ws() as ws:
        answer = await ask(ws, raw)
        assert answer["success"] is False
        assert answer["error"]["code"] == case["code"], answer
        assert len(answer["message"]) > 10
        if "path" in case:
            assert answer["error"]["details"].get("path") == case["path"], answer
        # the same connection still answers a good request
        follow_up = await ask(ws, allocation(request_id="after"))
        assert follow_up["success"] is True and follow_up["request_id"] == "after"


async def test_corpus_covers_every_protocol_error_code_a_client_can_cause() -> None:
    codes = {case["code"] for case in CORPUS}
    assert {"InvalidJSON", "InvalidRequest", "UnknownPolicy", "UnknownAllocation"} <= codes
