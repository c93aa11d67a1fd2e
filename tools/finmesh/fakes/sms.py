"""A fake SMS provider: a real HTTP server on loopback that can fail on demand.

Protocol (what finmesh.notify.clients.senders.sms speaks): POST /messages with JSON
{"to", "text", "reference"}, "Authorization: Bearer <key>" and an
"Idempotency-Key" header; 202 {"message_id"} on success. A repeated
idempotency key is acknowledged without sending again, as real providers do.

GET /messages?to=<E.164 number> (same bearer key) lists what was accepted for
that number, oldest first: {"messages": [{"message_id", "to", "text",
"reference"}]}. It is the fake's "handset": `finmesh demo` reads one-time
codes from it. Nothing is logged.

    python -m finmesh.fakes.sms --port 8025
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from finmesh.fakes.http_base import HttpFake


class FakeSmsProvider(HttpFake):
    """A scripted "fail" answers an authorized, well-formed message with `failure_status` (see fail_next)."""

    NAME = "sms"
    STEPS = ("fail",)
    CHARSET = "utf-8"

    def __init__(self, api_key: str = "test-sms-key", host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(api_key=api_key, host=host, port=port)
        self.messages: list[dict[str, Any]] = []  # accepted, one per idempotency key
        self.requests = 0
        self.failure_status = 503
        self.failing_numbers: set[str] = set()
        self.arrived = asyncio.Event()
        self._seen: dict[str, str] = {}

    def routes(self) -> Iterable[web.RouteDef]:
        return [web.post("/messages", self._handle), web.get("/messages", self._read)]

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next `count` messages fail with `status` (intermittent trouble)."""
        self.clear_script()
        self.failure_status = status
        self.script(*["fail"] * count)

    def fail_number(self, number: str) -> None:
        """Every message to `number` fails with 503 until recover() (a permanently failing route)."""
        self.failing_numbers.add(number)

    def recover(self) -> None:
        self.clear_script()
        self.failing_numbers.clear()

    def to(self, number: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["to"] == number]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self.authorized(request):
            return self.json_reply({"error": "unauthorized"}, 401)
        try:
            body = await self.read_json(request)
        except ValueError:
            return self.json_reply({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict) or not body.get("to") or not body.get("text"):
            return self.json_reply({"error": "to and text are required"}, 400)
        if self.next_step() == "fail":
            return self.json_reply({"error": "provider trouble"}, self.failure_status)
        if body["to"] in self.failing_numbers:
            return self.json_reply({"error": "route down"}, 503)
        key = request.headers.get("Idempotency-Key", "")
        if key and key in self._seen:
            return self.json_reply({"message_id": self._seen[key], "duplicate": True}, 202)
        message_id = str(uuid.uuid4())
        if key:
            self._seen[key] = message_id
        self.messages.append(
            {"message_id": message_id, "to": body["to"], "text": body["text"], "reference": body.get("reference", "")}
        )
        self.arrived.set()
        return self.json_reply({"message_id": message_id}, 202)

    async def _read(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.json_reply({"error": "unauthorized"}, 401)
        number = request.query.get("to", "")
        if not number:
            return self.json_reply({"error": "to is required"}, 400)
        return self.json_reply({"messages": self.to(number)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8025)
    # The key from the environment keeps it off the process list (`finmesh up` passes it so).
    parser.add_argument("--api-key", default=os.environ.get("FINMESH_FAKE_API_KEY", "test-sms-key"))
    args = parser.parse_args()
    FakeSmsProvider(api_key=args.api_key, port=args.port).run()


if __name__ == "__main__":
    main()
