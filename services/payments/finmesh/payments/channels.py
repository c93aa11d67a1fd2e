"""Channel adapters: how payments talks to banks and other external channels.

HttpBankAdapter speaks JSON over HTTP with a timeout on every call and sends
the operation id as the channel's idempotency key. SandboxChannel confirms at
once, in-process: it serves `test_*` channels that have no URL configured
(local runs, the thin slice) and is switched off with FINMESH_CHANNEL_SANDBOX=false.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import Any, Protocol
from urllib.parse import urlsplit

from finmesh.payments.usecases.channels import PAYOUT, TOP_UP, ChannelAnswer, ChannelRequest
from finmesh.platform.observability.logs import get_logger

_log = get_logger("finmesh.payments.channels")


class ChannelUnavailable(Exception):
    """The channel did not answer (in time): the operation stays PENDING and may be retried."""


class ChannelAdapter(Protocol):
    async def execute(self, request: ChannelRequest) -> ChannelAnswer:
        """Collect (top-up) or pay out (payout); idempotent on request.operation_id."""
        ...

    async def lookup(self, operation_id: str) -> ChannelAnswer | None:
        """What the channel did with an operation, or None if it never received it."""
        ...


class SandboxChannel:
    async def execute(self, request: ChannelRequest) -> ChannelAnswer:
        return ChannelAnswer("SUCCEEDED", f"sandbox-{request.operation_id}")

    async def lookup(self, operation_id: str) -> ChannelAnswer | None:
        return ChannelAnswer("SUCCEEDED", f"sandbox-{operation_id}")


class HttpBankAdapter:
    """A bank's HTTP API: POST /v1/debits (collect), POST /v1/payouts, GET /v1/operations/{id}."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"channel URL must be http://host:port, not {base_url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout

    async def execute(self, request: ChannelRequest) -> ChannelAnswer:
        path = "/v1/debits" if request.kind == TOP_UP else "/v1/payouts"
        assert request.kind in (TOP_UP, PAYOUT)
        body = {
            "operation_id": request.operation_id,
            "amount_minor_units": request.amount,
            "currency_code": request.currency,
            "account_ref": request.account_id,
            "destination_token": request.destination_token,
        }
        status, reply = await self._call("POST", path, body, request.operation_id)
        if status != 200:
            raise ChannelUnavailable(f"channel answered HTTP {status}")
        return _answer(reply)

    async def lookup(self, operation_id: str) -> ChannelAnswer | None:
        status, reply = await self._call("GET", f"/v1/operations/{operation_id}", None, operation_id)
        if status == 404:
            return None
        if status != 200:
            raise ChannelUnavailable(f"channel answered HTTP {status}")
        return _answer(reply)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None, key: str) -> tuple[int, Any]:
        try:
            # http.client blocks: run it in a worker thread, bounded by the socket timeout and our own.
            return await asyncio.wait_for(asyncio.to_thread(self._blocking_call, method, path, body, key),
                                          self._timeout + 1.0)
        except (OSError, TimeoutError, http.client.HTTPException, ValueError) as error:
            _log.warning("channel_call_failed", path=path, error=type(error).__name__)
            raise ChannelUnavailable(type(error).__name__) from None

    def _blocking_call(self, method: str, path: str, body: dict[str, Any] | None, key: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            conn.request(method, self._prefix + path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, (json.loads(data) if data and response.status == 200 else None)
        finally:
            conn.close()


def _answer(reply: Any) -> ChannelAnswer:
    if not isinstance(reply, dict) or reply.get("status") not in ("SUCCEEDED", "FAILED"):
        raise ChannelUnavailable("channel answer without a final status")
    return ChannelAnswer(reply["status"], str(reply.get("reference", ""))[:64], str(reply.get("reason", ""))[:100])


class ChannelRegistry:
    def __init__(self, urls: dict[str, str], timeout: float, sandbox: bool) -> None:
        self._adapters: dict[str, ChannelAdapter] = {name: HttpBankAdapter(url, timeout) for name, url in urls.items()}
        self._sandbox = sandbox

    def get(self, channel: str) -> ChannelAdapter | None:
        adapter = self._adapters.get(channel)
        if adapter is None and self._sandbox and channel.startswith("test_"):
            return SandboxChannel()
        return adapter
