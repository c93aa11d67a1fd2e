"""Issue 16, defect 1: one customer must not be able to stop every top-up in a currency.

A top-up or payout is capped per channel and per tier, every leg of its transfer is checked for overflow
before the bank is asked, an operation the ledger refuses after the bank took the money is parked once
for manual reconciliation, and the sweeper brings every operation to a final state exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from structlog.testing import capture_logs

from finmesh.fakes.bank import FakeBank
from finmesh.payments.store.tiers import set_tier
from finmesh.payments.usecases.ledger_writer import Command
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.rpc.guard import reason_of
from tests.payments.harness import GENEROUS_LIMITS, key, payments_mesh, refusal

SUCCEEDED = pb.CHANNEL_OPERATION_STATUS_SUCCEEDED
PENDING = pb.CHANNEL_OPERATION_STATUS_PENDING
HUGE = 2**62
# Caps out of the way, for the tests that reach the ledger's own range.
NO_CAPS = {
    "tier_limits": {
        tier: {cur: {**row, "top_up": HUGE, "payout": HUGE} for cur, row in by_currency.items()}
        for tier, by_currency in GENEROUS_LIMITS.items()
    },
    "channel_caps": {"*": {cur: {"top_up": HUGE, "payout": HUGE} for cur in ("CNY", "USD")}},
}
FINAL = {"SUCCEEDED", "FAILED", "PARKED"}


def error_metadata(call_error: Any) -> dict[str, str]:
    """The ErrorInfo metadata of a refusal (tests.payments.harness.Refused keeps only the reason)."""
    status = rpc_status.from_call(call_error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return dict(info.metadata)
    return {}


async def refused_with_metadata(call: Any) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """(code, reason, ErrorInfo metadata) of a call's refusal; fails the test if it succeeds."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return error.code(), reason_of(error), error_metadata(error)
    raise AssertionError(f"expected a refusal, got {reply}")


async def operations(pay: Any) -> dict[str, tuple[str, str]]:
    """operation id -> (status, failure reason), as stored."""
    found = await pay.db.execute("SELECT operation_id, status, failure_reason FROM channel_operations")
    return {r[0]: (r[1], r[2]) for r in found}


async def test_one_huge_top_up_cannot_block_a_currency(databases, tmp_path: Path) -> None:
    """The issue's report: 2^62 through the instant test bank is capped; others' USD top-ups keep working."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        mallory, alice = await c.wallet(currency="USD"), await c.wallet(currency="USD")
        code, reason, meta = await refused_with_metadata(c.top_up(mallory, HUGE, currency="USD"))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LIMIT_EXCEEDED")
        assert meta["limit"] == "top_up"
        assert int(meta["limit_value"]) < HUGE
        assert await pay.db.scalar("SELECT COUNT(*) FROM channel_operations") == 0
        for _ in range(3):
            done = await c.top_up(alice, 1_000, currency="USD")
            assert done.operation.status == SUCCEEDED
        assert await c.triple(alice) == (3_000, 0, 3_000)
        assert {status for status, _ in (await operations(pay)).values()} == {"SUCCEEDED"}
        await pay.check_books()


async def test_tier_caps_refuse_before_the_bank_is_asked(databases, tmp_path: Path, bank: FakeBank) -> None:
    """A wallet's tier caps one top-up and one payout; the refusal names the cap; the bank never hears of it."""
    limits = {
        "low": {
            "CNY": {"single": 10_000, "daily_amount": 10**9, "daily_count": 10**6, "top_up": 50_000, "payout": 20_000}
        },
        "high": {
            "CNY": {"single": 1_000, "daily_amount": 10**9, "daily_count": 10**6, "top_up": 5_000, "payout": 2_000}
        },
    }
    settings = {"channel_urls": {"bank": bank.url}, "tier_limits": limits, "default_tier": "low"}
    async with payments_mesh(databases, tmp_path, **settings) as pay:
        c = pay.client
        await set_tier(pay.app.engine, "risky", "high")
        easy, risky = await c.wallet(), await c.wallet("risky")
        assert (await c.top_up(easy, 50_000, channel="bank")).operation.status == SUCCEEDED
        code, reason, meta = await refused_with_metadata(c.top_up(easy, 50_001, channel="bank"))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LIMIT_EXCEEDED")
        assert meta == {"limit": "top_up", "scope": "tier", "tier": "low", "limit_value": "50000"}
        code, reason, meta = await refused_with_metadata(c.top_up(risky, 5_001, channel="bank"))
        assert (reason, meta["scope"], meta["tier"], meta["limit_value"]) == ("LIMIT_EXCEEDED", "tier", "high", "5000")
        assert (await c.top_up(risky, 5_000, channel="bank")).operation.status == SUCCEEDED
        code, reason, meta = await refused_with_metadata(c.payout(risky, 2_001, channel="bank"))
        assert (reason, meta["limit"], meta["limit_value"]) == ("LIMIT_EXCEEDED", "payout", "2000")
        assert await c.triple(risky) == (5_000, 0, 5_000)  # nothing held for the refused payout
        assert (await c.payout(risky, 2_000, channel="bank")).operation.status == SUCCEEDED
        assert [b.amount for b in bank.operations.values()] == [50_000, 5_000, 2_000]
        # A currency without configured tier limits is refused for wallets, as payments are.
        usd = await c.wallet(currency="USD")
        assert (await refusal(c.top_up(usd, 100, channel="bank", currency="USD"))).reason == "LIMIT_EXCEEDED"
        assert len(bank.operations) == 3
        await pay.check_books()


async def test_channel_caps_bound_every_account(databases, tmp_path: Path, bank: FakeBank) -> None:
    """A channel's cap applies to wallets and merchants alike; channels not named take the "*" caps."""
    caps = {"bank": {"CNY": {"top_up": 30_000, "payout": 7_000}}, "*": {"CNY": {"top_up": 1_000, "payout": 1_000}}}
    settings = {"channel_urls": {"bank": bank.url}, "channel_caps": caps}
    async with payments_mesh(databases, tmp_path, **settings) as pay:
        c = pay.client
        alice, shop = await c.wallet(), await c.merchant()
        code, reason, meta = await refused_with_metadata(c.top_up(shop, 30_001, channel="bank"))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LIMIT_EXCEEDED")
        assert meta == {"limit": "top_up", "scope": "channel", "channel": "bank", "limit_value": "30000"}
        assert (await c.top_up(shop, 30_000, channel="bank")).operation.status == SUCCEEDED
        assert (await c.top_up(alice, 30_000, channel="bank")).operation.status == SUCCEEDED
        _, reason, meta = await refused_with_metadata(c.payout(alice, 7_001, channel="bank"))
        assert (reason, meta["limit"], meta["scope"], meta["limit_value"]) == (
            "LIMIT_EXCEEDED",
            "payout",
            "channel",
            "7000",
        )
        _, reason, meta = await refused_with_metadata(c.top_up(alice, 1_001))  # test_bank: the "*" caps
        assert (reason, meta["channel"], meta["limit_value"]) == ("LIMIT_EXCEEDED", "test_bank", "1000")
        assert (await c.top_up(alice, 1_000)).operation.status == SUCCEEDED
        assert [b.amount for b in bank.operations.values()] == [30_000, 30_000]
        await pay.check_books()


async def test_top_up_the_ledger_could_not_post_is_never_sent(databases, tmp_path: Path, bank: FakeBank) -> None:
    """Every leg is checked before the bank: the clearing account's range refuses AMOUNT_OVERFLOW up front."""
    async with payments_mesh(databases, tmp_path, channel_urls={"bank": bank.url}, **NO_CAPS) as pay:
        c = pay.client
        mallory, alice = await c.wallet(currency="USD"), await c.wallet(currency="USD")
        await c.top_up(mallory, HUGE - 500, channel="bank", currency="USD")
        code, reason, meta = await refused_with_metadata(c.top_up(alice, 1_000, channel="bank", currency="USD"))
        assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_OVERFLOW")
        assert meta["account_id"] == "clearing:bank:USD"
        assert len(bank.operations) == 1  # the bank never collected what could not be credited
        assert list((await operations(pay)).values()) == [("SUCCEEDED", "")]
        assert (await c.top_up(alice, 500, channel="bank", currency="USD")).operation.status == SUCCEEDED
        assert len(bank.operations) == 2
        await pay.check_books()


async def test_posting_refused_after_the_bank_took_the_money_parks_once(
    databases, tmp_path: Path, bank: FakeBank
) -> None:
    """The bank booked, then the ledger cannot post (a race the pre-check cannot see): PARKED, not PENDING forever.

    The caller sees PENDING (the outcome is the operator's now) and replays the same bytes; the sweeper
    leaves the row alone; nothing was credited and the books balance.
    """
    async with payments_mesh(
        databases, tmp_path, channel_urls={"bank": bank.url}, channel_timeout_seconds=0.5, **NO_CAPS
    ) as pay:
        c = pay.client
        mallory, alice = await c.wallet(currency="USD"), await c.wallet(currency="USD")
        bank.script("timeout")
        idem = key()
        lost = await refusal(c.top_up(alice, 1_000, channel="bank", idem=idem, currency="USD"))
        assert lost.reason == "CHANNEL_UNAVAILABLE"  # the bank booked it; the platform holds it PENDING
        await c.top_up(mallory, HUGE - 500, channel="bank", currency="USD")
        with capture_logs() as logs:
            parked = await c.top_up(alice, 1_000, channel="bank", idem=idem, currency="USD")
        assert parked.operation.status == PENDING
        assert parked.account.balance.total_minor_units == 0
        stored = await operations(pay)
        assert stored[parked.operation.operation_id] == ("PARKED", "LEDGER_REFUSED:AMOUNT_OVERFLOW")
        assert [e["event"] for e in logs if e["event"] == "channel_operation_parked"] == ["channel_operation_parked"]
        again = await c.top_up(alice, 1_000, channel="bank", idem=idem, currency="USD")
        assert again.SerializeToString() == parked.SerializeToString()
        later = datetime.now(UTC) + timedelta(hours=1)
        assert [await pay.app.sweeper.sweep_once(now=later) for _ in range(5)] == [0] * 5
        assert bank.lookups == []
        await pay.check_books()


async def test_payout_refused_by_the_ledger_after_the_bank_paid_keeps_its_hold(
    databases, tmp_path: Path, bank: FakeBank
) -> None:
    """The payout side of parking: the bank paid out, the clearing account cannot take it; the funds stay held
    (the money has left: it must not be spendable again) until an operator reconciles."""
    async with payments_mesh(
        databases, tmp_path, channel_urls={"bank": bank.url}, channel_timeout_seconds=0.5, **NO_CAPS
    ) as pay:
        c = pay.client
        whale, bob = await c.wallet(), await c.wallet()
        await c.top_up(whale, HUGE - 500, channel="test_bank")
        await c.top_up(bob, 1_000, channel="test_other")  # another clearing account: test_bank's is full
        bank.script("timeout")
        idem = key()
        assert (await refusal(c.payout(bob, 1_000, channel="bank", idem=idem))).reason == "CHANNEL_UNAVAILABLE"
        assert await c.triple(bob) == (0, 1_000, 1_000)
        await c.payout(whale, HUGE - 500, channel="bank")  # clearing:bank:CNY now at HUGE - 500
        parked = await c.payout(bob, 1_000, channel="bank", idem=idem)
        assert parked.operation.status == PENDING
        stored = await operations(pay)
        assert stored[parked.operation.operation_id] == ("PARKED", "LEDGER_REFUSED:AMOUNT_OVERFLOW")
        assert await c.triple(bob) == (0, 1_000, 1_000)
        assert await pay.app.sweeper.sweep_once(now=datetime.now(UTC) + timedelta(hours=1)) == 0
        await pay.check_books()


async def _legacy_refusal(pay: Any, operation_id: str) -> None:
    """What the unfixed code left behind: the caller's key answered AMOUNT_OVERFLOW, the operation PENDING."""
    row = (
        await pay.db.execute(
            "SELECT kind, idempotency_key, request_hash, idempotency_scope "
            "FROM channel_operations WHERE operation_id = :o",
            o=operation_id,
        )
    )[0]

    async def refuse(_: Any) -> Any:
        raise FailedPrecondition("AMOUNT_OVERFLOW", "the balance would leave the supported range")

    method, response_type = ("TopUp", pb.TopUpResponse) if row[0] == "TOP_UP" else ("Payout", pb.PayoutResponse)
    try:
        await pay.app.writer.submit(
            Command(
                method=method,
                scope=row[3],
                key=row[1],
                fingerprint=bytes(row[2]),
                response_type=response_type,
                action=refuse,
                render=lambda r: r,
            )
        )
    except FailedPrecondition:
        pass
    else:
        raise AssertionError("the refusal was not recorded")


async def test_sweeper_converges_each_operation_once(databases, tmp_path: Path, bank: FakeBank) -> None:
    """Many sweeper passes: every overdue operation is looked up and finished once, rows stuck by the old bug
    included (their callers' keys hold a refusal); every row ends final; none is handled twice."""
    async with payments_mesh(
        databases, tmp_path, channel_urls={"bank": bank.url}, channel_timeout_seconds=0.5, **NO_CAPS
    ) as pay:
        c = pay.client
        alice, bob, carol, mallory = [await c.wallet(currency="USD") for _ in range(4)]
        await c.top_up(alice, 10_000, channel="bank", currency="USD")
        ids: dict[str, str] = {}

        async def lost_top_up(name: str, account: str, amount: int, behaviour: str) -> None:
            bank.script(behaviour)
            idem = key()
            assert (
                await refusal(c.top_up(account, amount, channel="bank", idem=idem, currency="USD"))
            ).reason == "CHANNEL_UNAVAILABLE"
            rows = await pay.db.execute(
                "SELECT operation_id FROM channel_operations WHERE idempotency_key = :k", k=idem
            )
            ids[name] = rows[0][0]

        await lost_top_up("booked", bob, 700, "timeout")  # the bank took it: credit on sweep
        await lost_top_up("unseen", bob, 800, "down")  # never reached the bank: FAILED
        await lost_top_up("legacy_ok", carol, 900, "timeout")  # old bug's row, ledger can post it now
        await lost_top_up("legacy_stuck", carol, 1_100, "timeout")  # old bug's row, ledger still cannot
        await _legacy_refusal(pay, ids["legacy_ok"])
        await _legacy_refusal(pay, ids["legacy_stuck"])
        # The clearing account nearly full: only the small top-ups still fit (the old bug's USD state).
        await c.top_up(mallory, HUGE - 10_000 - 1_600 - 900, channel="bank", currency="USD")
        assert {status for status, _ in (await operations(pay)).values()} == {"PENDING", "SUCCEEDED"}

        later = datetime.now(UTC) + timedelta(hours=1)
        with capture_logs() as logs:
            passes = [await pay.app.sweeper.sweep_once(now=later + timedelta(seconds=15 * i)) for i in range(12)]
        assert passes == [4] + [0] * 11
        assert sorted(bank.lookups) == sorted(ids.values())  # each looked up once, never again
        swept = [e["operation_id"] for e in logs if e["event"] == "channel_operation_swept"]
        assert sorted(swept) == sorted(ids.values())
        parked = [e["operation_id"] for e in logs if e["event"] == "channel_operation_parked"]
        assert parked == [ids["legacy_stuck"]]
        stored = await operations(pay)
        assert {status for status, _ in stored.values()} <= FINAL
        assert stored[ids["booked"]][0] == "SUCCEEDED"
        assert stored[ids["unseen"]] == ("FAILED", "NOT_RECEIVED_BY_CHANNEL")
        assert stored[ids["legacy_ok"]][0] == "SUCCEEDED"  # the bank has the money: credited, late
        assert stored[ids["legacy_stuck"]] == ("PARKED", "LEDGER_REFUSED:AMOUNT_OVERFLOW")
        assert await c.triple(bob) == (700, 0, 700)
        assert await c.triple(carol) == (900, 0, 900)
        await pay.check_books()
