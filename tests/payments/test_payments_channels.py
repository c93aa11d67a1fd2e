"""Top-ups and payouts through a channel adapter talking HTTP to the fake bank."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from finmesh.fakes.bank import FakeBank
from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.payments.harness import key, payments_mesh, refusal

SUCCEEDED = pb.CHANNEL_OPERATION_STATUS_SUCCEEDED
FAILED = pb.CHANNEL_OPERATION_STATUS_FAILED


def bank_settings(bank: FakeBank) -> dict[str, object]:
    return {"channel_urls": {"bank": bank.url}, "channel_timeout_seconds": 0.5}


async def test_top_up_credits_only_after_the_bank_confirms(databases, tmp_path: Path, bank: FakeBank) -> None:
    """Success credits once with the bank's reference; a decline credits nothing and replays as declined."""
    async with payments_mesh(databases, tmp_path, **bank_settings(bank)) as pay:
        c = pay.client
        alice = await c.wallet()
        done = await c.top_up(alice, 5_000, channel="bank")
        assert done.operation.status == SUCCEEDED
        assert done.operation.channel_reference == bank.operations[done.operation.operation_id].reference
        assert done.account.balance.available_minor_units == 5_000
        bank.script("fail")
        idem = key()
        declined = await c.top_up(alice, 700, channel="bank", idem=idem)
        assert declined.operation.status == FAILED
        assert declined.account.balance.available_minor_units == 5_000
        calls = len(bank.requests)
        again = await c.top_up(alice, 700, channel="bank", idem=idem)
        assert again.SerializeToString() == declined.SerializeToString()
        assert len(bank.requests) == calls  # a stored answer is replayed without asking the bank again
        await pay.check_books()


async def test_top_up_timeout_then_retry_credits_once(databases, tmp_path: Path, bank: FakeBank) -> None:
    """The bank booked but answered too late: UNAVAILABLE, nothing credited; the retry credits exactly once."""
    async with payments_mesh(databases, tmp_path, **bank_settings(bank)) as pay:
        c = pay.client
        alice = await c.wallet()
        bank.script("timeout")
        idem = key()
        lost = await refusal(c.top_up(alice, 2_000, channel="bank", idem=idem))
        assert (lost.code, lost.reason) == (grpc.StatusCode.UNAVAILABLE, "CHANNEL_UNAVAILABLE")
        assert await c.triple(alice) == (0, 0, 0)
        retried = await c.top_up(alice, 2_000, channel="bank", idem=idem)
        assert retried.operation.status == SUCCEEDED
        assert await c.triple(alice) == (2_000, 0, 2_000)
        assert len(bank.operations) == 1
        bank.script("down")
        down = await refusal(c.top_up(alice, 300, channel="bank", idem="k-down"))
        assert down.code == grpc.StatusCode.UNAVAILABLE
        assert (await c.top_up(alice, 300, channel="bank", idem="k-down")).operation.status == SUCCEEDED
        assert await c.triple(alice) == (2_300, 0, 2_300)
        await pay.check_books()


async def test_payout_holds_then_settles_or_releases(databases, tmp_path: Path, bank: FakeBank) -> None:
    """Funds are held while the bank works; paid out on success, released on decline; never more than available."""
    async with payments_mesh(databases, tmp_path, **bank_settings(bank)) as pay:
        c = pay.client
        alice = await c.wallet()
        await c.top_up(alice, 10_000, channel="bank")
        paid = await c.payout(alice, 4_000, channel="bank")
        assert paid.operation.status == SUCCEEDED
        assert paid.account.balance.available_minor_units == 6_000
        bank.script("fail")
        declined = await c.payout(alice, 1_000, channel="bank")
        assert declined.operation.status == FAILED
        assert await c.triple(alice) == (6_000, 0, 6_000)
        assert (await refusal(c.payout(alice, 6_001, channel="bank"))).reason == "INSUFFICIENT_FUNDS"
        statement = bank.statement_csv().splitlines()
        assert statement[1:] == [
            f"{bank.operations[op].reference},{amount},CNY,{bank.operations[op].booked_at}"
            for op, amount in ((next(iter(bank.operations)), 10_000), (paid.operation.operation_id, -4_000))
        ]
        await pay.check_books()


async def test_payout_retried_under_timeouts_pays_once(databases, tmp_path: Path, bank: FakeBank) -> None:
    """A payout whose reply is lost keeps its hold; concurrent retries with the key pay exactly once."""
    async with payments_mesh(databases, tmp_path, **bank_settings(bank)) as pay:
        c = pay.client
        alice = await c.wallet()
        await c.top_up(alice, 10_000, channel="bank")
        bank.script("timeout")
        idem = key()
        lost = await refusal(c.payout(alice, 3_000, channel="bank", idem=idem))
        assert lost.reason == "CHANNEL_UNAVAILABLE"
        assert await c.triple(alice) == (7_000, 3_000, 10_000)  # reserved, not yet gone
        assert (await refusal(c.payout(alice, 7_001, channel="bank"))).reason == "INSUFFICIENT_FUNDS"
        replies = await asyncio.gather(*(c.payout(alice, 3_000, channel="bank", idem=idem) for _ in range(5)))
        assert {r.SerializeToString() for r in replies} == {replies[0].SerializeToString()}
        assert replies[0].operation.status == SUCCEEDED
        payouts = [b for b in bank.operations.values() if b.kind == "PAYOUT"]
        assert len(payouts) == 1
        assert await c.triple(alice) == (7_000, 0, 7_000)
        await pay.check_books()


async def test_sweeper_finishes_operations_nobody_retried(databases, tmp_path: Path, bank: FakeBank) -> None:
    """Overdue PENDING operations are looked up at the bank and finished; a late retry gets that answer."""
    async with payments_mesh(databases, tmp_path, **bank_settings(bank)) as pay:
        c = pay.client
        alice = await c.wallet()
        await c.top_up(alice, 10_000, channel="bank")
        bank.script("timeout", "down")
        booked, unseen = key(), key()
        assert (await refusal(c.payout(alice, 1_000, channel="bank", idem=booked))).reason == "CHANNEL_UNAVAILABLE"
        assert (await refusal(c.payout(alice, 2_000, channel="bank", idem=unseen))).reason == "CHANNEL_UNAVAILABLE"
        assert await c.triple(alice) == (7_000, 3_000, 10_000)
        assert await pay.app.sweeper.sweep_once(now=datetime.now(UTC)) == 0  # not overdue yet
        assert await pay.app.sweeper.sweep_once(now=datetime.now(UTC) + timedelta(hours=1)) == 2
        assert await c.triple(alice) == (9_000, 0, 9_000)  # one paid out, the one the bank never saw released
        late = await c.payout(alice, 1_000, channel="bank", idem=booked)
        assert late.operation.status == SUCCEEDED
        never = await c.payout(alice, 2_000, channel="bank", idem=unseen)
        assert never.operation.status == FAILED
        assert len([b for b in bank.operations.values() if b.kind == "PAYOUT"]) == 1
        await pay.check_books()
