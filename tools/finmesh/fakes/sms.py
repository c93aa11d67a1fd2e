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
import json
import os
import uuid
from typing import Any

from aiohttp import web


class FakeSmsProvider:
    def __init__(self, api_key: str = "test-sms-key", host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.host = host
        self._port = port
        self.messages: list[dict[str, Any]] = []  # accepted, one per idempotency key
        self.requests = 0
        self.failures_left = 0
        self.failure_status = 503
        self.fail_always_status = 0
        self.failing_numbers: set[str] = set()
        self.delay_seconds = 0.0
        self.arrived = asyncio.Event()
        self._seen: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._site_port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._site_port}"

    async def start(self) -> FakeSmsProvider:
        app = web.Application()
        app.router.add_post("/messages", self._handle)
        app.router.add_get("/messages", self._read)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        self._site_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next `count` requests fail with `status` (intermittent trouble)."""
        self.failures_left, self.failure_status = count, status

    def fail_number(self, number: str) -> None:
        """Every message to `number` fails with 503 until recover() (a permanently failing route)."""
        self.failing_numbers.add(number)

    def recover(self) -> None:
        self.failures_left = 0
        self.fail_always_status = 0
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
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(body, dict) or not body.get("to") or not body.get("text"):
            return web.json_response({"error": "to and text are required"}, status=400)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.failures_left:
            self.failures_left -= 1
            return web.json_response({"error": "provider trouble"}, status=self.failure_status)
        if self.fail_always_status or body["to"] in self.failing_numbers:
            return web.json_response({"error": "route down"}, status=self.fail_always_status or 503)
        key = request.headers.get("Idempotency-Key", "")
        if key and key in self._seen:
            return web.json_response({"message_id": self._seen[key], "duplicate": True}, status=202)
        message_id = str(uuid.uuid4())
        if key:
            self._seen[key] = message_id
        self.messages.append({"message_id": message_id, "to": body["to"], "text": body["text"],
                              "reference": body.get("reference", "")})
        self.arrived.set()
        return web.json_response({"message_id": message_id}, status=202)


    async def _read(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        number = request.query.get("to", "")
        if not number:
            return web.json_response({"error": "to is required"}, status=400)
        return web.json_response({"messages": self.to(number)})


async def _serve(port: int, api_key: str) -> None:
    provider = await FakeSmsProvider(api_key=api_key, port=port).start()
    # The key is not printed: local runs generate it into the data dir.
    print(json.dumps({"service": "sms", "port": provider._site_port}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8025)
    # The key from the environment keeps it off the process list (`finmesh up` passes it so).
    parser.add_argument("--api-key", default=os.environ.get("FINMESH_FAKE_API_KEY", "test-sms-key"))
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.api_key))


if __name__ == "__main__":
    main()
