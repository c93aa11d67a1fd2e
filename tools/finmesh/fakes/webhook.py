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
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from finmesh.fakes.http_base import HttpFake

TIMESTAMP_HEADER = "X-Finmesh-Timestamp"
SIGNATURE_HEADER = "X-Finmesh-Signature"
EVENT_ID_HEADER = "X-Finmesh-Event-Id"


class FakeWebhookReceiver(HttpFake):
    """A scripted "fail" answers an authentic delivery with 503 (see fail_next)."""

    NAME = "webhook"
    STEPS = ("fail",)
    CHARSET = "utf-8"

    def __init__(
        self,
        secret: str = "",
        tolerance_seconds: float = 300,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host=host, port=port)
        self.secret = secret
        self.tolerance_seconds = tolerance_seconds
        self._clock = clock
        self.accepted: list[dict[str, Any]] = []
        self.rejected: list[str] = []  # reasons: "stale", "bad_signature", "malformed"
        self.duplicates = 0
        self.arrived = asyncio.Event()
        self._seen: set[str] = set()

    @property
    def url(self) -> str:
        return f"{super().url}/hooks"

    def routes(self) -> Iterable[web.RouteDef]:
        return [web.post("/hooks", self._handle)]

    def fail_next(self, count: int) -> None:
        """The next `count` authentic deliveries are answered 503 (the customer's endpoint in trouble)."""
        self.clear_script()
        self.script(*["fail"] * count)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.accepted) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.accepted

    def check(self, timestamp: str, signature: str, body: bytes) -> str:
        """ "" if the request is authentic and fresh, else the reason it is refused."""
        if not timestamp.isdigit() or not signature.startswith("v1="):
            return "malformed"
        if abs(self._clock() - int(timestamp)) > self.tolerance_seconds:
            return "stale"
        expected = hmac.new(self.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return "" if hmac.compare_digest("v1=" + expected, signature) else "bad_signature"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self.check(request.headers.get(TIMESTAMP_HEADER, ""), request.headers.get(SIGNATURE_HEADER, ""), body)
        if problem:
            self.rejected.append(problem)
            return self.json_reply({"error": problem}, 401)
        if self.next_step() == "fail":
            return self.json_reply({"error": "try later"}, 503)
        event_id = request.headers.get(EVENT_ID_HEADER, "")
        if event_id in self._seen:
            self.duplicates += 1
            return self.json_reply({"duplicate": True})
        self._seen.add(event_id)
        self.accepted.append(json.loads(body))
        self.arrived.set()
        return self.json_reply({"ok": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8026)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    receiver = FakeWebhookReceiver(secret=args.secret, port=args.port)
    receiver.run(lambda: f"fake webhook receiver on {receiver.url}")


if __name__ == "__main__":
    main()
