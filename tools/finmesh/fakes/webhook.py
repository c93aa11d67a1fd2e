"""A webhook receiver as a customer would write one: it checks the HMAC-SHA256 signature over
"<timestamp>.<body>" and refuses stale timestamps (replays), then dedupes on the event id.

Written against the documented scheme, not notify's signing code, so a test
through it checks notify's signatures independently.

    python -m finmesh.fakes.webhook --port 8026 --secret whsec_...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

TIMESTAMP_HEADER = "X-Finmesh-Timestamp"
SIGNATURE_HEADER = "X-Finmesh-Signature"
EVENT_ID_HEADER = "X-Finmesh-Event-Id"


class FakeWebhookReceiver:
    def __init__(self, secret: str = "", tolerance_seconds: float = 300, host: str = "127.0.0.1",
                 port: int = 0, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.tolerance_seconds = tolerance_seconds
        self.host = host
        self._port = port
        self._clock = clock
        self.accepted: list[dict[str, Any]] = []
        self.rejected: list[str] = []  # reasons: "stale", "bad_signature", "malformed"
        self.duplicates = 0
        self.failures_left = 0
        self.arrived = asyncio.Event()
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._site_port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._site_port}/hooks"

    async def start(self) -> FakeWebhookReceiver:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        self._site_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fail_next(self, count: int) -> None:
        self.failures_left = count

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.accepted) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.accepted

    def check(self, timestamp: str, signature: str, body: bytes) -> str:
        """"" if the request is authentic and fresh, else the reason it is refused."""
        if not timestamp.isdigit() or not signature.startswith("v1="):
            return "malformed"
        if abs(self._clock() - int(timestamp)) > self.tolerance_seconds:
            return "stale"
        expected = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return "" if hmac.compare_digest("v1=" + expected, signature) else "bad_signature"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self.check(request.headers.get(TIMESTAMP_HEADER, ""), request.headers.get(SIGNATURE_HEADER, ""),
                             body)
        if problem:
            self.rejected.append(problem)
            return web.json_response({"error": problem}, status=401)
        if self.failures_left:
            self.failures_left -= 1
            return web.json_response({"error": "try later"}, status=503)
        event_id = request.headers.get(EVENT_ID_HEADER, "")
        if event_id in self._seen:
            self.duplicates += 1
            return web.json_response({"duplicate": True})
        self._seen.add(event_id)
        self.accepted.append(json.loads(body))
        self.arrived.set()
        return web.json_response({"ok": True})


async def _serve(port: int, secret: str) -> None:
    receiver = await FakeWebhookReceiver(secret=secret, port=port).start()
    print(f"fake webhook receiver on {receiver.url}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8026)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.secret))


if __name__ == "__main__":
    main()
