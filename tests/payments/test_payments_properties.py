"""Stateful property tests: random operation sequences against the real service, checked against a model.

Hypothesis drives payments, captures, voids, reviews, refunds, freezes,
settlements, payouts, batch transfers, replays and key reuse through gRPC,
on SQLite and PostgreSQL. A small model predicts every balance and every
refusal reason; after each step the invariants hold: each currency sums to
zero, no customer balance is negative, holds equal what holding payments
reserve, takings equal what is unsettled, the service agrees with the model,
and at the end the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, ClassVar

import grpc
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.rpc.guard import reason_of
from tests.payments.harness import PaymentsUnderTest, money, payments_mesh, payments_profile

FEES = {"settlement_fee_rate_bp": 60, "settlement_fee_fixed_minor_units": 7, "settlement_reserve_bp": 500}
WALLETS = ("w1", "w2", "w3")
MERCHANT = "m"
NAMES = (*WALLETS, MERCHANT)
HOLDING = ("AUTHORIZED", "IN_REVIEW")
# Risk's packaged rules send payments this large to review (AMOUNT_LARGE), so sequences reach IN_REVIEW.
LARGE = 5_000_000
CAPTURED = ("CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED")


@dataclass
class Account:
    account_id: str
    merchant: bool = False
    available: int = 0
    held: int = 0
    unsettled: int = 0
    frozen: bool = False


@dataclass
class Payment:
    payment_id: str
    payer: str
    payee: str
    amount: int
    manual: bool
    status: str
    captured: int = 0
    refunded: int = 0
    settled: bool = False


@dataclass
class Context:
    """What the machine (running in a worker thread) needs from the test's event loop."""

    loop: asyncio.AbstractEventLoop
    under_test: PaymentsUnderTest
    examples: int = 0
    steps: dict[str, int] = field(default_factory=dict)


def _status(payment: pb.Payment) -> str:
    return pb.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")


class LedgerMachine(RuleBasedStateMachine):
    ctx: ClassVar[Context]

    def __init__(self) -> None:
        super().__init__()
        self.ctx.examples += 1
        self.c = self.ctx.under_test.client
        self.accounts: dict[str, Account] = {}
        for name in NAMES:
            account_id = self.run(self.c.merchant() if name == MERCHANT else self.c.wallet())
            self.accounts[name] = Account(account_id, merchant=name == MERCHANT)
            if name != MERCHANT:  # start with money, so sequences reach the interesting states sooner
                start = LARGE * 3 if name == "w3" else 100_000
                self.run(self.c.top_up(account_id, start))
                self.accounts[name].available = start
        self.payments: list[Payment] = []
        self.recorded: list[tuple[str, Any, Any]] = []  # (method, request, reply bytes or (code, reason))

    # -- plumbing ------------------------------------------------------------------------

    def run(self, call: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(call, self.ctx.loop).result(timeout=120)  # type: ignore[arg-type]

    def rpc(self, method: str, request: Any) -> Any:
        """Call `method` from the event loop's thread (gRPC aio calls belong to their loop)."""

        async def on_loop() -> Any:
            return await getattr(self.c.stub, method)(request)

        return self.run(on_loop())

    def call(self, method: str, request: Any) -> tuple[Any, tuple[str, str] | None]:
        """(reply, None) or (None, (code, reason)); the answer is remembered for replay rules."""
        self.ctx.steps[method] = self.ctx.steps.get(method, 0) + 1
        try:
            reply = self.rpc(method, request)
        except grpc.aio.AioRpcError as error:
            refusal = (error.code().name, reason_of(error))
            assert refusal[0] != "INTERNAL" and refusal[0] != "UNKNOWN", error.details()
            self.recorded.append((method, request, refusal))
            return None, refusal
        self.recorded.append((method, request, reply.SerializeToString()))
        return reply, None

    def expect(self, got: tuple[str, str] | None, reason: str | None) -> None:
        assert (got[1] if got else None) == reason, f"expected {reason}, got {got}"

    @staticmethod
    def key() -> str:
        return uuid.uuid4().hex

    def _takings(self, payee: str) -> str:
        return "unsettled" if self.accounts[payee].merchant else "available"

    def _add(self, name: str, bucket: str, amount: int) -> None:
        account = self.accounts[name]
        setattr(account, bucket, getattr(account, bucket) + amount)

    # -- rules -----------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), amount=st.integers(1, 50_000))
    def top_up(self, name: str, amount: int) -> None:
        _, refused = self.call(
            "TopUp",
            pb.TopUpRequest(
                idempotency_key=self.key(),
                channel="test_bank",
                account_id=self.accounts[name].account_id,
                amount=money(amount),
            ),
        )
        self.expect(refused, None)
        self._add(name, "available", amount)

    @rule(
        which=st.integers(0, len(NAMES) - 1),
        offset=st.integers(1, len(NAMES) - 1),
        amount=st.one_of(st.integers(1, 30_000), st.just(LARGE)),
        manual=st.booleans(),
    )
    def pay(self, which: int, offset: int, amount: int, manual: bool) -> None:
        payer, payee = NAMES[which], NAMES[(which + offset) % len(NAMES)]  # never paying oneself
        source = self.accounts[payer]
        request = pb.CreatePaymentRequest(
            idempotency_key=self.key(),
            payer_account_id=source.account_id,
            payee_account_id=self.accounts[payee].account_id,
            amount=money(amount),
            capture_mode=pb.CAPTURE_MODE_MANUAL if manual else pb.CAPTURE_MODE_AUTOMATIC,
        )
        reply, refused = self.call("CreatePayment", request)
        if source.frozen:
            return self.expect(refused, "ACCOUNT_FROZEN")
        if source.available < amount:
            return self.expect(refused, "INSUFFICIENT_FUNDS")
        if refused is not None:
            return self.expect(refused, "RISK_DECLINED")  # the only refusal the model cannot foresee
        status = _status(reply.payment)
        payment = Payment(reply.payment.payment_id, payer, payee, amount, manual, status)
        source.available -= amount
        if status == "CAPTURED":
            assert not manual
            payment.captured = amount
            self._add(payee, self._takings(payee), amount)
        else:
            assert status in (HOLDING if manual else ("IN_REVIEW",)), status
            source.held += amount
        self.payments.append(payment)

    @precondition(lambda self: self.payments)
    @rule(pick=st.integers(0, 10**6), percent=st.one_of(st.none(), st.integers(1, 120)))
    def capture(self, pick: int, percent: int | None) -> None:
        p = self.payments[pick % len(self.payments)]
        request = pb.CapturePaymentRequest(idempotency_key=self.key(), payment_id=p.payment_id)
        amount = p.amount if percent is None else max(1, p.amount * percent // 100)
        if percent is not None:
            request.amount.CopyFrom(money(amount))
        reply, refused = self.call("CapturePayment", request)
        if p.status != "AUTHORIZED":
            return self.expect(refused, "INVALID_STATE")
        if amount > p.amount:
            return self.expect(refused, "VALIDATION_FAILED")
        self.expect(refused, None)
        payer = self.accounts[p.payer]
        payer.held -= p.amount
        payer.available += p.amount - amount
        self._add(p.payee, self._takings(p.payee), amount)
        p.status, p.captured = "CAPTURED", amount
        assert (_status(reply.payment), reply.payment.captured.minor_units) == ("CAPTURED", amount)

    @precondition(lambda self: self.payments)
    @rule(pick=st.integers(0, 10**6))
    def void(self, pick: int) -> None:
        p = self.payments[pick % len(self.payments)]
        _, refused = self.call(
            "VoidPayment", pb.VoidPaymentRequest(idempotency_key=self.key(), payment_id=p.payment_id)
        )
        if p.status not in HOLDING:
            return self.expect(refused, "INVALID_STATE")
        self.expect(refused, None)
        payer = self.accounts[p.payer]
        payer.held -= p.amount
        payer.available += p.amount
        p.status = "VOIDED"

    @precondition(lambda self: self.payments)
    @rule(pick=st.integers(0, 10**6), approve=st.booleans())
    def review(self, pick: int, approve: bool) -> None:
        p = self.payments[pick % len(self.payments)]
        decision = pb.REVIEW_DECISION_APPROVE if approve else pb.REVIEW_DECISION_DECLINE
        _, refused = self.call(
            "ReviewPayment",
            pb.ReviewPaymentRequest(idempotency_key=self.key(), payment_id=p.payment_id, decision=decision),
        )
        if p.status != "IN_REVIEW":
            return self.expect(refused, "INVALID_STATE")
        self.expect(refused, None)
        payer = self.accounts[p.payer]
        if not approve:
            payer.held -= p.amount
            payer.available += p.amount
            p.status = "DECLINED"
        elif p.manual:
            p.status = "AUTHORIZED"
        else:
            payer.held -= p.amount
            self._add(p.payee, self._takings(p.payee), p.amount)
            p.status, p.captured = "CAPTURED", p.amount

    @precondition(lambda self: self.payments)
    @rule(pick=st.integers(0, 10**6), amount=st.one_of(st.none(), st.integers(1, 30_000)))
    def refund(self, pick: int, amount: int | None) -> None:
        p = self.payments[pick % len(self.payments)]
        request = pb.RefundPaymentRequest(idempotency_key=self.key(), payment_id=p.payment_id)
        if amount is not None:
            request.amount.CopyFrom(money(amount))
        _, refused = self.call("RefundPayment", request)
        if p.status not in CAPTURED:
            return self.expect(refused, "INVALID_STATE")
        refundable = p.captured - p.refunded
        wanted = refundable if amount is None else amount
        if wanted <= 0 or wanted > refundable:
            return self.expect(refused, "REFUND_EXCEEDS_CAPTURED")
        payee = self.accounts[p.payee]
        bucket = "unsettled" if payee.merchant and not p.settled else "available"
        if payee.frozen:
            return self.expect(refused, "ACCOUNT_FROZEN")
        if getattr(payee, bucket) < wanted:
            return self.expect(refused, "INSUFFICIENT_FUNDS")
        self.expect(refused, None)
        self._add(p.payee, bucket, -wanted)
        self._add(p.payer, "available", wanted)
        p.refunded += wanted
        p.status = "REFUNDED" if p.refunded == p.captured else "PARTIALLY_REFUNDED"

    @rule(name=st.sampled_from(NAMES), frozen=st.booleans())
    def freeze(self, name: str, frozen: bool) -> None:
        account = self.accounts[name]
        if frozen:
            request: Any = pb.FreezeAccountRequest(
                idempotency_key=self.key(), account_id=account.account_id, reason="PROPERTY"
            )
            _, refused = self.call("FreezeAccount", request)
        else:
            request = pb.UnfreezeAccountRequest(idempotency_key=self.key(), account_id=account.account_id)
            _, refused = self.call("UnfreezeAccount", request)
        self.expect(refused, None)
        account.frozen = frozen

    @precondition(
        lambda self: any(p.payee == MERCHANT and p.status in CAPTURED and not p.settled for p in self.payments)
    )
    @rule()
    def settle(self) -> None:
        merchant = self.accounts[MERCHANT]
        reply, refused = self.call(
            "RunSettlement",
            pb.RunSettlementRequest(idempotency_key=self.key(), merchant_account_id=merchant.account_id),
        )
        self.expect(refused, None)
        due = [p for p in self.payments if p.payee == MERCHANT and p.status in CAPTURED and not p.settled]
        gross = sum(p.captured - p.refunded for p in due)
        count = sum(1 for p in due if p.captured > p.refunded)
        rate = int((Decimal(gross) * FEES["settlement_fee_rate_bp"] / 10_000).quantize(0, ROUND_HALF_UP))
        fees = min(gross, rate + FEES["settlement_fee_fixed_minor_units"] * count)
        reserve = min(gross - fees, gross * FEES["settlement_reserve_bp"] // 10_000)
        batch = reply.batch
        assert (
            batch.gross.minor_units,
            batch.fees.minor_units,
            batch.risk_reserve.minor_units,
            batch.net.minor_units,
            batch.payment_count,
        ) == (gross, fees, reserve, gross - fees - reserve, len(due))
        merchant.unsettled -= gross
        merchant.available += gross - fees - reserve
        for p in due:
            p.settled = True

    @rule(name=st.sampled_from(NAMES), amount=st.integers(1, 40_000))
    def payout(self, name: str, amount: int) -> None:
        account = self.accounts[name]
        _, refused = self.call(
            "Payout",
            pb.PayoutRequest(
                idempotency_key=self.key(),
                account_id=account.account_id,
                channel="test_bank",
                amount=money(amount),
                destination_token="tok-property",
            ),
        )
        if account.frozen:
            return self.expect(refused, "ACCOUNT_FROZEN")
        if account.available < amount <= account.available + account.unsettled:
            return self.expect(refused, "UNSETTLED_FUNDS")
        if account.available < amount:
            return self.expect(refused, "INSUFFICIENT_FUNDS")
        self.expect(refused, None)
        account.available -= amount

    @rule(
        items=st.lists(
            st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES), st.integers(1, 20_000)), min_size=1, max_size=6
        )
    )
    def batch(self, items: list[tuple[str, str, int]]) -> None:
        """An institution's batch, as the owner of its first source; a transfer out of another owner's account
        (every account here has an owner of its own) refuses the whole call and moves nothing."""
        specs = [
            pb.TransferSpec(
                reference=f"r{i}",
                from_account_id=self.accounts[s].account_id,
                to_account_id=self.accounts[d].account_id,
                amount=money(a),
            )
            for i, (s, d, a) in enumerate(items)
        ]
        reply, refused = self.call(
            "BatchCreateTransfers", pb.BatchCreateTransfersRequest(idempotency_key=self.key(), transfers=specs)
        )
        if any(source != items[0][0] for source, _, _ in items):
            return self.expect(refused, "PERMISSION_MISSING")
        self.expect(refused, None)
        for (source, destination, amount), result in zip(items, reply.results, strict=True):
            if source == destination:
                expected = "VALIDATION_FAILED"
            elif self.accounts[source].frozen:
                expected = "ACCOUNT_FROZEN"
            elif self.accounts[source].available < amount:
                expected = "INSUFFICIENT_FUNDS"
            else:
                expected = ""
                self._add(source, "available", -amount)
                self._add(destination, "available", amount)
            assert result.reason == expected, (result, expected)
        return None

    @precondition(lambda self: self.recorded)
    @rule(pick=st.integers(0, 10**6))
    def replay(self, pick: int) -> None:
        """Any earlier call sent again with its key gets the same answer and changes nothing."""
        method, request, first = self.recorded[pick % len(self.recorded)]
        if isinstance(first, tuple) and first[1] in ("VALIDATION_FAILED", "RISK_UNAVAILABLE"):
            return  # not recorded on purpose: a corrected retry may succeed
        try:
            again: Any = self.rpc(method, request).SerializeToString()
        except grpc.aio.AioRpcError as error:
            again = (error.code().name, reason_of(error))
        assert again == first, method

    @precondition(lambda self: any(m in ("CreatePayment", "TopUp") for m, _, a in self.recorded))
    @rule(pick=st.integers(0, 10**6))
    def reuse_key(self, pick: int) -> None:
        """The same key with another request is refused and changes nothing."""
        candidates = [(m, r) for m, r, _ in self.recorded if m in ("CreatePayment", "TopUp")]
        method, request = candidates[pick % len(candidates)]
        other = type(request)()
        other.CopyFrom(request)
        other.amount.minor_units += 1
        _, refused = self.call(method, other)
        self.recorded.pop()  # a refusal computed on the fly, not a stored answer
        self.expect(refused, "IDEMPOTENCY_KEY_REUSED")

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        db = self.ctx.under_test.db
        assert all(total == 0 for total in self.run(db.totals()).values())
        assert self.run(db.negative_customer_balances()) == []

    @invariant()
    def model_is_consistent(self) -> None:
        for name in NAMES:
            holding = sum(p.amount for p in self.payments if p.payer == name and p.status in HOLDING)
            assert self.accounts[name].held == holding, name
        takings = sum(
            p.captured - p.refunded
            for p in self.payments
            if p.payee == MERCHANT and p.status in CAPTURED and not p.settled
        )
        assert self.accounts[MERCHANT].unsettled == takings

    @invariant()
    def service_agrees_with_model(self) -> None:
        for name, account in self.accounts.items():
            got = self.run(self.c.triple(account.account_id))
            total = account.available + account.held + account.unsettled
            assert got == (account.available, account.held + account.unsettled, total), (name, got, account)

    def teardown(self) -> None:
        assert self.run(self.c.verify_audit()).intact


async def test_random_operation_sequences_keep_the_invariants(databases, tmp_path: Path) -> None:
    """Hypothesis explores operation sequences; every invariant holds after every step, on both databases."""
    async with payments_mesh(databases, tmp_path, **FEES) as under_test:
        LedgerMachine.ctx = Context(asyncio.get_running_loop(), under_test)
        await asyncio.to_thread(run_state_machine_as_test, LedgerMachine, settings=payments_profile())
        ctx = LedgerMachine.ctx
        assert ctx.examples >= 2
        # Every kind of operation ran at least once across the sequences.
        expected = {
            "TopUp",
            "CreatePayment",
            "CapturePayment",
            "VoidPayment",
            "RefundPayment",
            "RunSettlement",
            "Payout",
            "BatchCreateTransfers",
            "FreezeAccount",
        }
        assert expected <= set(ctx.steps), (ctx.examples, sorted(expected - set(ctx.steps)), sorted(ctx.steps.items()))
        await under_test.check_books()
