"""Banks: the outside parties that collect top-ups and send payouts, one per payment channel.

A payment channel (the `channel` of TopUp and Payout, the keys of FINMESH_CHANNEL_URLS) names the bank that
serves it. HttpBank speaks the bank's JSON API over the platform's HTTP client, with a timeout on every call,
and sends the operation id as the bank's idempotency key. SandboxBank confirms at once, in-process: it serves
`test_*` channels that have no URL configured (local runs, the thin slice) and is switched off with
FINMESH_CHANNEL_SANDBOX=false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from finmesh.platform.http import HttpClient, HttpUnreachable
from finmesh.platform.observability.logs import get_logger

_log = get_logger("finmesh.payments.clients.banks")

# What the bank is asked to do, by operation kind (the kinds channel_operations.kind stores).
_PATHS = {"TOP_UP": "/v1/debits", "PAYOUT": "/v1/payouts"}


class BankUnavailable(Exception):
    """The bank did not answer (in time): the operation stays PENDING and may be retried."""


@dataclass(frozen=True)
class BankOrder:
    """Collect a top-up from, or send a payout to, `account_id`'s outside account; once per operation id."""

    operation_id: str
    kind: str  # TOP_UP or PAYOUT
    account_id: str
    currency: str
    amount: int
    destination_token: str


@dataclass(frozen=True)
class BankAnswer:
    """What the bank said: SUCCEEDED or FAILED, its reference for the booking, and why it failed."""

    status: str
    reference: str = ""
    failure_reason: str = ""


class Bank(Protocol):
    async def execute(self, order: BankOrder) -> BankAnswer:
        """Collect (top-up) or pay out (payout); idempotent on order.operation_id."""
        ...

    async def lookup(self, operation_id: str) -> BankAnswer | None:
        """What the bank did with an operation, or None if it never received it."""
        ...


class SandboxBank:
    async def execute(self, order: BankOrder) -> BankAnswer:
        return BankAnswer("SUCCEEDED", f"sandbox-{order.operation_id}")

    async def lookup(self, operation_id: str) -> BankAnswer | None:
        return BankAnswer("SUCCEEDED", f"sandbox-{operation_id}")


class HttpBank:
    """A bank's HTTP API: POST /v1/debits (collect), POST /v1/payouts, GET /v1/operations/{id}."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"bank URL must be http://host:port, not {base_url!r}")
        self._http = HttpClient(base_url, timeout_seconds=timeout)

    async def execute(self, order: BankOrder) -> BankAnswer:
        body = {
            "operation_id": order.operation_id,
            "amount_minor_units": order.amount,
            "currency_code": order.currency,
            "account_ref": order.account_id,
            "destination_token": order.destination_token,
        }
        status, reply = await self._call("POST", _PATHS[order.kind], body, order.operation_id)
        if status != 200:
            raise BankUnavailable(f"bank answered HTTP {status}")
        return _answer(reply)

    async def lookup(self, operation_id: str) -> BankAnswer | None:
        status, reply = await self._call("GET", f"/v1/operations/{operation_id}", None, operation_id)
        if status == 404:
            return None
        if status != 200:
            raise BankUnavailable(f"bank answered HTTP {status}")
        return _answer(reply)

    async def close(self) -> None:
        await self._http.close()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None, key: str) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        try:
            answer = await self._http.request(method, path, json_body=body, headers=headers)
        except HttpUnreachable as error:
            # Log events keep the names operators already search for.
            _log.warning("channel_call_failed", path=path, error=str(error))
            raise BankUnavailable(str(error)) from None
        return answer.status, answer.body


def _answer(reply: Any) -> BankAnswer:
    if not isinstance(reply, dict) or reply.get("status") not in ("SUCCEEDED", "FAILED"):
        raise BankUnavailable("bank answer without a final status")
    return BankAnswer(reply["status"], str(reply.get("reference", ""))[:64], str(reply.get("reason", ""))[:100])


class Banks:
    """The bank serving each payment channel: HTTP for the channels FINMESH_CHANNEL_URLS names, the sandbox
    for unnamed `test_*` ones when FINMESH_CHANNEL_SANDBOX allows."""

    def __init__(self, urls: dict[str, str], timeout: float, sandbox: bool) -> None:
        self._http = {channel: HttpBank(url, timeout) for channel, url in urls.items()}
        self._sandbox = sandbox

    def get(self, channel: str) -> Bank | None:
        bank: Bank | None = self._http.get(channel)
        if bank is None and self._sandbox and channel.startswith("test_"):
            return SandboxBank()
        return bank

    async def close(self) -> None:
        for bank in self._http.values():
            await bank.close()
