"""A fake bank: a real HTTP server that collects top-ups, sends payouts and prints statements.

API (JSON):
- POST /v1/debits   {operation_id, amount_minor_units, currency_code, account_ref}   collect money for a top-up
- POST /v1/payouts  {operation_id, amount_minor_units, currency_code, destination_token}
    -> 200 {operation_id, status: SUCCEEDED|FAILED, reference, reason}
  Idempotent on operation_id: a repeated id gets the first answer, never a
  second booking; the same id with a different body is 409.
- GET /v1/operations/{operation_id} -> the stored answer, or 404 if never received
- GET /v1/statement.csv -> channel_reference,amount_minor_units,currency_code,booked_at
  (signed from the platform's side: collected money positive, payouts negative)
- POST /v1/control {"script": ["fail", "timeout", ...], "reply_delay": 3.0}

Behaviours, taken one per new operation from the script (then "ok"):
- ok: book and answer SUCCEEDED;
- fail: answer FAILED (declined), nothing booked;
- timeout: book, then answer only after reply_delay (the caller's timeout fires first);
- down: answer 503 without booking (the bank is unavailable).

Run standalone: python -m finmesh.fakes.bank --port 0 (prints {"service": "bank", "port": N}).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from finmesh.fakes.http_base import HttpFake

BEHAVIOURS = ("ok", "fail", "timeout", "down")
KINDS = {"/v1/debits": "DEBIT", "/v1/payouts": "PAYOUT"}
LOOKUP = "/v1/operations/"


@dataclass
class Booking:
    operation_id: str
    kind: str  # DEBIT or PAYOUT
    amount: int
    currency: str
    status: str
    reference: str
    reason: str
    booked_at: str
    body: dict[str, Any]

    def answer(self) -> dict[str, Any]:
        return {
            "operation_id": self.operation_id,
            "status": self.status,
            "reference": self.reference,
            "reason": self.reason,
        }


class FakeBank(HttpFake):
    """Takes one scripted behaviour per new operation (BEHAVIOURS; "ok" once the script is spent)."""

    NAME = "bank"
    STEPS_ARE = "behaviours"
    STEPS = BEHAVIOURS

    def __init__(self, host: str = "127.0.0.1", port: int = 0, reply_delay: float = 3.0) -> None:
        super().__init__(host=host, port=port)
        self.operations: dict[str, Booking] = {}
        self.requests: list[tuple[str, str]] = []  # (kind, operation_id), in arrival order
        self.lookups: list[str] = []  # operation ids asked about (GET /v1/operations/{id}), in arrival order
        self.reply_delay = reply_delay
        self._counter = 0

    def routes(self) -> Iterable[web.RouteDef]:
        # Catch-alls dispatching on the raw request target, as the bank always did: a body that is not a
        # JSON object is refused before the path is looked at, and a query string is part of the path.
        return [web.post("/{target:.*}", self._post), web.get("/{target:.*}", self._get)]

    def statement_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["channel_reference", "amount_minor_units", "currency_code", "booked_at"])
        with self._lock:
            booked = [b for b in self.operations.values() if b.status == "SUCCEEDED"]
        for b in booked:
            writer.writerow([b.reference, b.amount if b.kind == "DEBIT" else -b.amount, b.currency, b.booked_at])
        return out.getvalue()

    def handle_operation(self, kind: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None, float]:
        """(HTTP status, JSON answer, seconds to wait before answering)."""
        operation_id = str(body.get("operation_id", ""))
        amount = body.get("amount_minor_units")
        if not operation_id or not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return 400, {"error": "operation_id and a positive integer amount_minor_units are required"}, 0.0
        with self._lock:
            self.requests.append((kind, operation_id))
            existing = self.operations.get(operation_id)
            if existing is not None:
                if existing.body != body or existing.kind != kind:
                    return 409, {"error": "operation_id reused with a different request"}, 0.0
                return 200, existing.answer(), 0.0
            behaviour = self.next_step() or "ok"
            if behaviour == "down":
                return 503, {"error": "temporarily unavailable"}, 0.0
            self._counter += 1
            succeeded = behaviour != "fail"
            booking = Booking(
                operation_id=operation_id,
                kind=kind,
                amount=amount,
                currency=str(body.get("currency_code", "")),
                status="SUCCEEDED" if succeeded else "FAILED",
                reference=f"BNK{self._counter:010d}",
                reason="" if succeeded else "DECLINED_BY_BANK",
                booked_at=datetime.now(UTC).isoformat(),
                body=body,
            )
            self.operations[operation_id] = booking
        return 200, booking.answer(), self.reply_delay if behaviour == "timeout" else 0.0

    def lookup(self, operation_id: str) -> dict[str, Any] | None:
        with self._lock:
            self.lookups.append(operation_id)
            booking = self.operations.get(operation_id)
        return None if booking is None else booking.answer()

    def control(self, body: dict[str, Any]) -> None:
        if "reply_delay" in body:
            self.reply_delay = float(body["reply_delay"])
        self.script(*body.get("script", []))

    async def _post(self, request: web.Request) -> web.Response:
        try:
            body = await self.read_json(request, if_empty={})
            if not isinstance(body, dict):
                raise ValueError("body must be an object")
        except ValueError:
            return self.json_reply({"error": "JSON object expected"}, 400)
        if request.raw_path == "/v1/control":
            self.control(body)
            return self.json_reply({"ok": True})
        kind = KINDS.get(request.raw_path)
        if kind is None:
            return self.json_reply({"error": "no such endpoint"}, 404)
        status, answer, delay = self.handle_operation(kind, body)
        if delay:
            await asyncio.sleep(delay)  # the caller's timeout fires first; the booking stands
        return self.json_reply(answer or {}, status)

    async def _get(self, request: web.Request) -> web.Response:
        if request.raw_path == "/v1/statement.csv":
            return web.Response(body=self.statement_csv().encode(), content_type="text/csv")
        if request.raw_path.startswith(LOOKUP):
            answer = self.lookup(request.raw_path[len(LOOKUP) :])
            return self.json_reply(answer or {"error": "unknown operation"}, 200 if answer else 404)
        return self.json_reply({"error": "no such endpoint"}, 404)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake bank for finmesh channel tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    FakeBank(args.host, args.port).run()


if __name__ == "__main__":
    main()
