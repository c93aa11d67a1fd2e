"""Payments through gRPC: capture modes, review, refunds, limits, freezing, and what each refusal says."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from finmesh.payments.store.tiers import set_tier
from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.auth import ActingAs, bearer
from tests.payments.harness import Client, money, payments_mesh, refusal

MANUAL = pb.CAPTURE_MODE_MANUAL


async def test_manual_capture_partial_then_refund_in_parts(databases, tmp_path: Path) -> None:
    """Authorize holds; a partial capture pays part and releases the rest; refunds never exceed the capture."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, shop = await c.wallet(), await c.merchant()
        await c.top_up(alice, 10_000)
        held = await c.pay(alice, shop, 6_000, mode=MANUAL)
        assert held.status == pb.PAYMENT_STATUS_AUTHORIZED
        assert await c.triple(alice) == (4_000, 6_000, 10_000)
        captured = await c.capture(held.payment_id, 5_000)
        assert (captured.status, captured.captured.minor_units) == (pb.PAYMENT_STATUS_CAPTURED, 5_000)
        assert await c.triple(alice) == (5_000, 0, 5_000)
        # A merchant's takings wait for settlement: not available, counted as held.
        assert await c.triple(shop) == (0, 5_000, 5_000)

        first = await c.refund(held.payment_id, 2_000)
        assert first.payment.status == pb.PAYMENT_STATUS_PARTIALLY_REFUNDED
        assert first.refund.amount.minor_units == 2_000
        too_much = await refusal(c.refund(held.payment_id, 3_001))
        assert (too_much.code, too_much.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURED")
        rest = await c.refund(held.payment_id)  # no amount: everything still refundable
        assert (rest.refund.amount.minor_units, rest.payment.status) == (3_000, pb.PAYMENT_STATUS_REFUNDED)
        assert (await refusal(c.refund(held.payment_id, 1))).reason == "REFUND_EXCEEDS_CAPTURED"
        assert await c.triple(alice) == (10_000, 0, 10_000)
        assert await c.triple(shop) == (0, 0, 0)
        await pay.check_books()


async def test_void_and_state_rules(databases, tmp_path: Path) -> None:
    """Void releases a hold once; capturing, voiding or refunding in the wrong state is INVALID_STATE."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 1_000)
        held = await c.pay(alice, bob, 700, mode=MANUAL)
        assert (await c.void(held.payment_id)).status == pb.PAYMENT_STATUS_VOIDED
        assert await c.triple(alice) == (1_000, 0, 1_000)
        for call in (c.void(held.payment_id), c.capture(held.payment_id), c.refund(held.payment_id, 1)):
            assert (await refusal(call)).reason == "INVALID_STATE"
        over = await c.pay(alice, bob, 500, mode=MANUAL)
        bad = await refusal(c.capture(over.payment_id, 501))
        assert (bad.code, bad.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["amount.minor_units"])
        missing = await refusal(c.capture("no-such-payment"))
        assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
        await pay.check_books()


async def test_held_funds_cannot_be_spent_twice(databases, tmp_path: Path) -> None:
    """Money on hold is not available: a second payment needing it is refused."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 1_000)
        await c.pay(alice, bob, 800, mode=MANUAL)
        assert (await refusal(c.pay(alice, bob, 300))).reason == "INSUFFICIENT_FUNDS"
        assert (await c.pay(alice, bob, 200)).status == pb.PAYMENT_STATUS_CAPTURED
        await pay.check_books()


async def test_review_approve_captures_and_decline_releases(databases, tmp_path: Path) -> None:
    """Payments risk sent to review hold funds until an officer decides (risk unreachable => review here)."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        await pay.mesh.stop("risk")  # risk_unavailable_policy=review: every payment goes to an officer
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 5_000)
        first = await c.pay(alice, bob, 1_000)
        second = await c.pay(alice, bob, 2_000, mode=MANUAL)
        assert first.status == second.status == pb.PAYMENT_STATUS_IN_REVIEW
        assert list(first.risk.reasons) == ["RISK_UNAVAILABLE"]
        assert await c.triple(alice) == (2_000, 3_000, 5_000)
        approved = await c.review(first.payment_id, approve=True)
        assert (approved.status, approved.captured.minor_units) == (pb.PAYMENT_STATUS_CAPTURED, 1_000)
        authorized = await c.review(second.payment_id, approve=True)  # manual capture: approval authorizes
        assert authorized.status == pb.PAYMENT_STATUS_AUTHORIZED
        assert (await refusal(c.review(second.payment_id, approve=False))).reason == "INVALID_STATE"
        third = await c.pay(alice, bob, 500)
        assert (await c.review(third.payment_id, approve=False)).status == pb.PAYMENT_STATUS_DECLINED
        assert await c.triple(alice) == (2_000, 2_000, 4_000)
        assert await c.triple(bob) == (1_000, 0, 1_000)
        bad = await refusal(c.stub.ReviewPayment(pb.ReviewPaymentRequest(idempotency_key="k", payment_id="p")))
        assert (bad.code, bad.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["decision"])
        await pay.check_books()


async def test_refusals_name_their_reason(databases, tmp_path: Path) -> None:
    """Currency mismatch, frozen payer, platform accounts and overflow are specific refusals, never INTERNAL."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, bob, dollars = await c.wallet(), await c.wallet(), await c.wallet(currency="USD")
        await c.top_up(alice, 1_000)
        mismatch = await refusal(c.pay(alice, dollars, 10))
        assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH")
        usd_payment = await refusal(c.pay(alice, bob, 10, currency="USD"))
        assert usd_payment.reason == "CURRENCY_MISMATCH"
        fee = await c.open(pb.ACCOUNT_KIND_PLATFORM_FEE, owner="")
        assert (await refusal(c.pay(alice, fee, 10))).reason == "INVALID_STATE"
        await c.freeze(bob)
        # A frozen account may still be paid (only paying and being paid out stop).
        assert (await c.pay(alice, bob, 100)).status == pb.PAYMENT_STATUS_CAPTURED
        assert (await refusal(c.pay(bob, alice, 50))).reason == "ACCOUNT_FROZEN"
        assert (await refusal(c.payout(bob, 50))).reason == "ACCOUNT_FROZEN"
        await c.freeze(bob, frozen=False)
        assert (await c.pay(bob, alice, 50)).status == pb.PAYMENT_STATUS_CAPTURED
        overflow = await refusal(c.pay(alice, bob, 2**62 + 1))
        assert (overflow.code, overflow.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["amount.minor_units"])
        # One top-up is capped far below the ledger's range (which test_payments_channel_safety reaches).
        capped = await refusal(c.top_up(await c.wallet(), 2**62 - 5_000))
        assert (capped.code, capped.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LIMIT_EXCEEDED")
        await pay.check_books()


async def test_limits_per_tier(databases, tmp_path: Path) -> None:
    """Single, daily amount and daily count limits per tier; unknown tiers get the strictest; LIMIT_EXCEEDED."""
    limits = {
        "low": {"CNY": {"single": 10_000, "daily_amount": 20_000, "daily_count": 10, "top_up": 50_000}},
        "high": {"CNY": {"single": 1_000, "daily_amount": 2_500, "daily_count": 3, "top_up": 50_000}},
    }
    async with payments_mesh(databases, tmp_path, tier_limits=limits, default_tier="low") as pay:
        c = pay.client
        risky_user, odd_user = "user-high", "user-odd"
        await set_tier(pay.app.engine, risky_user, "high")
        await set_tier(pay.app.engine, odd_user, "platinum")  # not configured: strictest limits apply
        risky, odd, easy, shop = (
            await c.wallet(risky_user),
            await c.wallet(odd_user),
            await c.wallet(),
            await c.merchant(),
        )
        for account in (risky, odd, easy):
            await c.top_up(account, 50_000)
        single = await refusal(c.pay(risky, shop, 1_001))
        assert (single.code, single.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LIMIT_EXCEEDED")
        assert "single" in single.details
        await c.pay(risky, shop, 1_000)
        await c.pay(risky, shop, 1_000)
        daily = await refusal(c.pay(risky, shop, 600))
        assert daily.reason == "LIMIT_EXCEEDED" and "daily amount" in daily.details
        await c.pay(risky, shop, 400)
        count = await refusal(c.pay(risky, shop, 1))
        assert count.reason == "LIMIT_EXCEEDED" and "daily count" in count.details
        assert (await refusal(c.pay(odd, shop, 1_001))).reason == "LIMIT_EXCEEDED"
        assert (await c.pay(easy, shop, 9_000)).status == pb.PAYMENT_STATUS_CAPTURED
        # A currency without configured limits is refused rather than unlimited, top-ups to wallets included.
        usd, usd_shop = await c.wallet(currency="USD"), await c.merchant(currency="USD")
        assert (await refusal(c.top_up(usd, 1_000, currency="USD"))).reason == "LIMIT_EXCEEDED"
        assert (await refusal(c.pay(usd, usd_shop, 10, currency="USD"))).reason == "LIMIT_EXCEEDED"
        assert await c.triple(risky) == (50_000 - 2_400, 0, 50_000 - 2_400)
        await pay.check_books()


async def test_list_payments_and_ledger_entries_page_newest_first(databases, tmp_path: Path) -> None:
    """Lists page with opaque tokens, newest first, and show every entry of the account."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 10_000)
        ids = [(await c.pay(alice, bob, 100 + i)).payment_id for i in range(5)]
        seen, token = [], ""
        while True:
            page = await c.stub.ListPayments(pb.ListPaymentsRequest(account_id=bob, page_size=2, page_token=token))
            seen += [p.payment_id for p in page.payments]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(ids) and len(seen) == 5
        entries, token = [], ""
        while True:
            page = await c.stub.ListLedgerEntries(
                pb.ListLedgerEntriesRequest(account_id=alice, page_size=4, page_token=token)
            )
            entries += list(page.entries)
            token = page.next_page_token
            if not token:
                break
        assert [e.amount_minor_units for e in entries] == [-104, -103, -102, -101, -100, 10_000]
        assert [e.kind for e in entries] == ["PAYMENT"] * 5 + ["TOP_UP"]
        bad = await refusal(c.stub.ListPayments(pb.ListPaymentsRequest(account_id=bob, page_token="garbage")))
        assert bad.fields == ["page_token"]
        await pay.check_books()


async def test_every_mutating_call_replays_its_first_answer(databases, tmp_path: Path) -> None:
    """Same key + same request: the first reply byte for byte; same key + other request from the same caller:
    IDEMPOTENCY_KEY_REUSED (keys are per caller: the other request keeps the first one's token)."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, shop = await c.wallet(), await c.merchant()
        await c.top_up(alice, 10_000)
        held = await c.pay(alice, shop, 3_000, mode=MANUAL)
        # (method, request, a change that keeps the request valid but makes it another request)
        requests = [
            (
                "OpenAccount",
                pb.OpenAccountRequest(
                    idempotency_key="o1", owner_id="u", currency_code="CNY", kind=pb.ACCOUNT_KIND_CUSTOMER_WALLET
                ),
                "currency_code",
                "USD",
            ),
            (
                "TopUp",
                pb.TopUpRequest(idempotency_key="t1", account_id=alice, channel="test_bank", amount=money(500)),
                "channel",
                "test_other",
            ),
            (
                "CapturePayment",
                pb.CapturePaymentRequest(idempotency_key="c1", payment_id=held.payment_id, amount=money(2_000)),
                "payment_id",
                "other",
            ),
            (
                "RefundPayment",
                pb.RefundPaymentRequest(idempotency_key="r1", payment_id=held.payment_id, amount=money(100)),
                "reason",
                "other",
            ),
            (
                "Payout",
                pb.PayoutRequest(
                    idempotency_key="p1",
                    account_id=alice,
                    channel="test_bank",
                    amount=money(100),
                    destination_token="tok",
                ),
                "destination_token",
                "x",
            ),
            (
                "FreezeAccount",
                pb.FreezeAccountRequest(idempotency_key="f1", account_id=shop, reason="OPERATOR"),
                "reason",
                "other",
            ),
            (
                "RunSettlement",
                pb.RunSettlementRequest(idempotency_key="s1", merchant_account_id=shop),
                "merchant_account_id",
                "other",
            ),
        ]
        for method, request, field, value in requests:
            call = getattr(c.stub, method)
            caller = bearer(
                ActingAs(pay.mesh.issuer, pay.mesh.book).token_for(
                    f"/finmesh.payments.v1.PaymentsService/{method}", request
                )
            )
            first = await call(request, metadata=caller)
            again = await call(request, metadata=caller)
            assert first.SerializeToString() == again.SerializeToString(), method
            other = type(request)()
            other.CopyFrom(request)
            setattr(other, field, value)
            reused = await refusal(call(other, metadata=caller))
            assert reused.reason == "IDEMPOTENCY_KEY_REUSED", method
        assert await c.triple(alice) == (10_000 - 3_000 + 1_000 + 500 + 100 - 100, 0, 8_500)
        await pay.check_books()


async def test_bad_input_is_invalid_argument_with_fields(databases, tmp_path: Path) -> None:
    """Malformed requests name every bad field and never reach the ledger."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        opened = await refusal(
            c.stub.OpenAccount(
                pb.OpenAccountRequest(idempotency_key="x", currency_code="XXX", kind=pb.ACCOUNT_KIND_CLEARING)
            )
        )
        assert opened.fields == ["kind", "currency_code", "owner_id"]
        topup = await refusal(
            c.stub.TopUp(pb.TopUpRequest(idempotency_key="y", account_id="", channel="no_such_bank", amount=money(0)))
        )
        assert topup.fields == ["account_id", "channel", "amount.minor_units"]
        payout = await refusal(
            c.stub.Payout(pb.PayoutRequest(idempotency_key="z", account_id="a", channel="test_bank", amount=money(5)))
        )
        assert payout.fields == ["destination_token"]
        no_key = await refusal(c.stub.VoidPayment(pb.VoidPaymentRequest(payment_id="p")))
        assert no_key.fields == ["idempotency_key"]
        assert (await c.verify_audit()).rows_checked == 0


async def test_client_for_other_tests_is_exported() -> None:
    """The harness client is importable on its own (used by the benchmarks)."""
    assert Client.__name__ == "Client"


async def test_authorizations_nobody_captures_expire(databases, tmp_path: Path) -> None:
    """An authorization older than its time to live is voided once and its hold released."""
    async with payments_mesh(databases, tmp_path, authorization_ttl_seconds=3_600) as pay:
        c = pay.client
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 1_000)
        old = await c.pay(alice, bob, 600, mode=MANUAL)
        captured = await c.pay(alice, bob, 100, mode=MANUAL)
        await c.capture(captured.payment_id)
        sweeper = pay.app.sweeper
        assert await sweeper.expire_authorizations(datetime.now(UTC)) == 0
        later = datetime.now(UTC) + timedelta(hours=2)
        assert await sweeper.expire_authorizations(later) == 1
        assert await sweeper.expire_authorizations(later) == 0
        got = await c.stub.GetPayment(pb.GetPaymentRequest(payment_id=old.payment_id))
        assert got.payment.status == pb.PAYMENT_STATUS_VOIDED
        assert await c.triple(alice) == (900, 0, 900)
        assert (await refusal(c.capture(old.payment_id))).reason == "INVALID_STATE"
        await pay.check_books()


async def test_concurrent_retries_with_one_key_pay_once(databases, tmp_path: Path) -> None:
    """Eight identical requests at once (one key, funds for one payment): one payment, eight identical answers."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, bob = await c.wallet(), await c.wallet()
        await c.top_up(alice, 1_000)
        idem = "same-key"
        replies = await asyncio.gather(*(c.pay(alice, bob, 1_000, idem=idem) for _ in range(8)))
        assert len({r.SerializeToString() for r in replies}) == 1
        assert replies[0].status == pb.PAYMENT_STATUS_CAPTURED
        assert await c.triple(alice) == (0, 0, 0)
        assert await c.triple(bob) == (1_000, 0, 1_000)
        await pay.check_books()
