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
import collections
import contextlib
import csv
import io
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOURS = ("ok", "fail", "timeout", "down")


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
        return {"operation_id": self.operation_id, "status": self.status, "reference": self.reference,
                "reason": self.reason}


class FakeBank:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, reply_delay: float = 3.0) -> None:
        self.operations: dict[str, Booking] = {}
        self.requests: list[tuple[str, str]] = []  # (path, operation_id), in arrival order
        self.lookups: list[str] = []  # operation ids asked about (GET /v1/operations/{id}), in arrival order
        self.reply_delay = reply_delay
        self._script: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._counter = 0
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeBank:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-bank", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (the standalone process)."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeBank:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def script(self, *behaviours: str) -> None:
        """How the next new operations are treated, in order; afterwards every operation succeeds."""
        unknown = set(behaviours) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}; expected some of {BEHAVIOURS}")
        with self._lock:
            self._script.extend(behaviours)

    def statement_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["channel_reference", "amount_minor_units", "currency_code", "booked_at"])
        with self._lock:
            booked = [b for b in self.operations.values() if b.status == "SUCCEEDED"]
        for b in booked:
            writer.writerow([b.reference, b.amount if b.kind == "DEBIT" else -b.amount, b.currency, b.booked_at])
        return out.getvalue()

    # -- request handling (server threads) -------------------------------------------------

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
            behaviour = self._script.popleft() if self._script else "ok"
            if behaviour == "down":
                return 503, {"error": "temporarily unavailable"}, 0.0
            self._counter += 1
            succeeded = behaviour != "fail"
            booking = Booking(
                operation_id=operation_id, kind=kind, amount=amount, currency=str(body.get("currency_code", "")),
                status="SUCCEEDED" if succeeded else "FAILED", reference=f"BNK{self._counter:010d}",
                reason="" if succeeded else "DECLINED_BY_BANK", booked_at=datetime.now(UTC).isoformat(),
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


def _handler_for(bank: FakeBank) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:  # keep test output quiet
            return

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be an object")
            except ValueError:
                self._send(400, {"error": "JSON object expected"})
                return
            if self.path == "/v1/control":
                bank.control(body)
                self._send(200, {"ok": True})
                return
            kinds = {"/v1/debits": "DEBIT", "/v1/payouts": "PAYOUT"}
            if self.path not in kinds:
                self._send(404, {"error": "no such endpoint"})
                return
            status, answer, delay = bank.handle_operation(kinds[self.path], body)
            if delay:
                time.sleep(delay)
            self._send(status, answer)

        def do_GET(self) -> None:
            if self.path == "/v1/statement.csv":
                data = bank.statement_csv().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            prefix = "/v1/operations/"
            if self.path.startswith(prefix):
                answer = bank.lookup(self.path[len(prefix):])
                self._send(200 if answer else 404, answer or {"error": "unknown operation"})
                return
            self._send(404, {"error": "no such endpoint"})

        def _send(self, status: int, answer: dict[str, Any] | None) -> None:
            data = json.dumps(answer or {}).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the caller gave up waiting (the "timeout" behaviour)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake bank for finmesh channel tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    bank = FakeBank(args.host, args.port)
    print(json.dumps({"service": "bank", "port": bank.port}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        bank.serve_forever()


if __name__ == "__main__":
    main()
