"""What the servicer guard's field rules cost per call, beside a same-run baseline.

    python -m bench.fields [--calls 200000] [--rounds 5]

Times finmesh.platform.rpc.field_rules on the hot path's request, a CreatePaymentRequest as a client sends
it (ids, amount, a description, the risk context), against the same loop with no check (the baseline:
the loop and the attribute reads a handler does anyway), and on the worst ordinary case: a description
of 200 characters that is not plain printable text (line breaks, so the control-character scan runs)
and carries a card number to mask. Prints the median of the rounds in microseconds per call, and what
that is at CreatePayment's ~600 calls/s. Never passes or fails on a time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.rpc.field_rules import checker_for

PAYMENTS_PER_SECOND = 600


def _request(description: str) -> pb.CreatePaymentRequest:
    return pb.CreatePaymentRequest(
        idempotency_key="3f2b8c1e-9d4a-4e21-b7f0-6a5c2d1e0f93",
        payer_account_id="acc-7c1e9d4a-4e21-b7f0-6a5c2d1e",
        payee_account_id="acc-2d1e0f93-3f2b-8c1e-9d4a-4e21b7f0",
        amount=money_pb2.Money(currency_code="CNY", minor_units=12_345),
        capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
        description=description,
        risk_context=pb.RiskContext(device_id="device-8c1e9d4a", ip_address="203.0.113.7", ip_country="CN"),
    )


def _per_call_us(
    run: Callable[[pb.CreatePaymentRequest], object], make: Callable[[], pb.CreatePaymentRequest], calls: int
) -> float:
    requests = [make() for _ in range(256)]  # fresh messages: masking rewrites the description in place
    start = time.perf_counter()
    for i in range(calls):
        run(requests[i & 255])
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    checker = checker_for(pb.CreatePaymentRequest.DESCRIPTOR)

    def baseline(request: pb.CreatePaymentRequest) -> object:
        return request.payer_account_id

    cases = {
        "no check (baseline)": (baseline, lambda: _request("dinner with Li, split two ways")),
        "field rules, usual request": (checker.check, lambda: _request("dinner with Li, split two ways")),
        "field rules, lines + card to mask": (
            checker.check,
            lambda: _request(("rent for March\nflat 12B, paid with 4111 1111 1111 1111\n" * 4)[:200]),
        ),
    }
    results = {
        name: statistics.median(
            _per_call_us(run, make, args.calls // 10 if "card" in name else args.calls) for _ in range(args.rounds)
        )
        for name, (run, make) in cases.items()
    }
    base = results["no check (baseline)"]
    for name, micros in results.items():
        extra = micros - base
        print(
            f"{name:36s} {micros:7.2f} us/call   +{extra:6.2f} us over baseline"
            f"   {extra * PAYMENTS_PER_SECOND / 1e4:5.2f}% of one core at {PAYMENTS_PER_SECOND}/s"
        )


if __name__ == "__main__":
    main()
