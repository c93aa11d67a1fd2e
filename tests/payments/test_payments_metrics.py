"""Payments' metrics, read in-process: payments by outcome and risk decision, channel operations by state, replays,
the ledger writer's batches, and the periodic ledger invariant check catching a balance changed by hand."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from finmesh.payments.v1 import payments_service_pb2 as pb
from tests import metrics
from tests.payments.harness import key, payments_mesh

PAYMENTS = "finmesh.payments"
CHANNEL = "finmesh.payments.channel_operations"


def _readings() -> dict[str, float]:
    return {
        "captured": metrics.value(PAYMENTS, status="CAPTURED", risk_decision="APPROVE"),
        "in_review": metrics.value(PAYMENTS, status="IN_REVIEW", risk_decision="REVIEW"),
        "top_up_pending": metrics.value(CHANNEL, operation="top_up", state="PENDING"),
        "top_up_succeeded": metrics.value(CHANNEL, operation="top_up", state="SUCCEEDED"),
        "payout_pending": metrics.value(CHANNEL, operation="payout", state="PENDING"),
        "payout_succeeded": metrics.value(CHANNEL, operation="payout", state="SUCCEEDED"),
        "replays": metrics.value("finmesh.idempotency.replays", {"rpc.method": "CreatePayment"}),
        "batches": metrics.value("finmesh.ledger.batch_size"),
        "commands": metrics.histogram_sum("finmesh.ledger.batch_size"),
        "commits": metrics.value("finmesh.ledger.commit_duration"),
    }


async def _checked_after(moment: float, timeout: float = 15.0) -> float:
    """The invariant gauge once a check has run after `moment`."""
    end = time.monotonic() + timeout
    while metrics.value("finmesh.ledger.invariant_last_check_timestamp") <= moment:
        assert time.monotonic() < end, "no ledger check ran"
        await asyncio.sleep(0.05)
    return metrics.value("finmesh.ledger.invariant_violations")


async def test_payments_count_by_outcome_and_the_invariant_check_catches_an_unbalanced_row(
    databases: Any, tmp_path: Path
) -> None:
    async with payments_mesh(databases, tmp_path, metrics_sample_seconds=0.05) as pay:
        c = pay.client
        # Start-up made every known series, before any traffic.
        assert ("DECLINED", "DECLINE") in {
            (s, d)
            for s in metrics.attribute_values(PAYMENTS, "status")
            for d in metrics.attribute_values(PAYMENTS, "risk_decision")
        }
        assert "CreatePayment" in metrics.attribute_values("finmesh.idempotency.replays", "rpc.method")
        before = _readings()

        alice, shop = await c.wallet(), await c.merchant()
        await c.top_up(alice, 6_000_000)
        await c.payout(alice, 100)
        idem = key()
        first = await c.pay(alice, shop, 1_000, idem=idem)
        again = await c.pay(alice, shop, 1_000, idem=idem)  # a retry: the stored answer, no second payment
        assert first == again and first.status == pb.PAYMENT_STATUS_CAPTURED
        # Risk's packaged rules hold payments of 50,000.00 CNY and more for review.
        held = await c.pay(alice, shop, 5_000_000)
        assert held.status == pb.PAYMENT_STATUS_IN_REVIEW

        after = _readings()
        change = {name: after[name] - before[name] for name in before}
        assert change["captured"] == 1, change
        assert change["in_review"] == 1, change
        assert change["replays"] == 1, change
        assert change["top_up_pending"] == change["top_up_succeeded"] == 1, change
        assert change["payout_pending"] == change["payout_succeeded"] == 1, change
        # Open accounts (2), top-up and payout (two commands each) and two payments, in however many batches.
        assert change["commands"] >= 8 and 1 <= change["batches"] <= change["commands"], change
        assert change["commits"] == change["batches"], change
        # Labels stay bounded: statuses and decisions, never an id.
        assert metrics.attribute_values(PAYMENTS, "status") <= {
            "CAPTURED",
            "AUTHORIZED",
            "IN_REVIEW",
            "DECLINED",
            "REFUSED",
        }

        assert await _checked_after(time.time()) == 0
        # One account's balance raised by hand, outside any transfer: the books no longer sum to zero.
        await pay.db.execute("UPDATE accounts SET available = available + 1 WHERE account_id = :a", a=alice)
        assert await _checked_after(time.time()) == 1
        await pay.db.execute("UPDATE accounts SET available = available - 1 WHERE account_id = :a", a=alice)
        assert await _checked_after(time.time()) == 0
