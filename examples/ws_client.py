"""Seed 004's Python WebSocket client, adapted to send an API key.

Usage:
    APPORTION_API_KEY=... python examples/ws_client.py [ws://127.0.0.1:8765] [policy_rule_uri]

The key comes from APPORTION_API_KEY, else from the credentials file that
`apportion serve` and `apportion demo` write (~/.config/apportion/credentials), profile
$APPORTION_PROFILE or "default".
"""

import asyncio
import configparser
import json
import logging
import os
import sys
from pathlib import Path

import websockets

logging.basicConfig(level=logging.INFO)


def api_key() -> str:
    key = os.environ.get("APPORTION_API_KEY")
    if key:
        return key
    path = Path(
        os.environ.get("APPORTION_CREDENTIALS", "~/.config/apportion/credentials")
    ).expanduser()
    config = configparser.ConfigParser()
    config.read(path)
    return config.get(os.environ.get("APPORTION_PROFILE", "default"), "api_key", fallback="")


async def send_resource_allocation_request(uri: str, policy_rule_uri: str) -> dict:
    sample_payload = {
        "adhoc": True,
        "policy_rule_uri": policy_rule_uri,
        "clusters": [],
        "inputs": {"gpus": 2},
        "filter": {},
        "search": {},
        "parameters": {},
        "settings": {},
    }
    headers = {"Authorization": f"Bearer {api_key()}"}
    async with websockets.connect(uri, additional_headers=headers) as websocket:
        # Send request
        await websocket.send(json.dumps(sample_payload))
        logging.info("Request sent to server.")

        # Wait for response
        response = await websocket.recv()
        logging.info(f"Response received: {response}")
        return json.loads(response)


# Run the client
if __name__ == "__main__":
    server = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765"
    policy = sys.argv[2] if len(sys.argv) > 2 else "binpack:1.0-stable"
    answer = asyncio.run(send_resource_allocation_request(server, policy))
    print(json.dumps(answer))
    sys.exit(0 if answer.get("success") else 1)
