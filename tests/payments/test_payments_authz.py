"""Payments' own authorization: customers act only on their accounts and payments, open only what their kind
may, pay within the limits of the tier in their token; risk gets valid facts, the payer's tier and synthetic."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc

from finmesh.payments.store.tiers import set_tier
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.server import Registration, create_server
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc
from tests.auth import Issuer, bearer
from tests.inprocess import running_mesh
from tests.payments.harness import GENEROUS_LIMITS, key, money, payments_mesh, refusal

DENIED = (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")


def _owner() -> str:
    return uuid.uuid4().hex


async def test_customers_act_only_on_their_own_accounts_and_payments(databases, tmp_path: Path) -> None:
    """Another customer's token is PERMISSION_DENIED on every account- or payment-named RPC; the owner and
    support are served; a stored answer is not replayed to someone else's token."""
    async with payments_mesh(databases, tmp_path) as pay:
        c, issuer = pay.client, pay.mesh.issuer
        alice, bob = _owner(), _owner()
        mallory = bearer(issuer.customer(_owner()))
        a_wallet, b_wallet = await c.wallet(alice), await c.wallet(bob)
        idem = key()
        await c.top_up(a_wallet, 10_000, idem=idem)
        paid = await c.pay(a_wallet, b_wallet, 1_000)

        s = c.stub
        calls = {
            "GetAccount": s.GetAccount(pb.GetAccountRequest(account_id=a_wallet), metadata=mallory),
            "ListAccounts": s.ListAccounts(pb.ListAccountsRequest(owner_id=alice), metadata=mallory),
            "TopUp": s.TopUp(
                pb.TopUpRequest(idempotency_key=key(), account_id=a_wallet, channel="test_bank", amount=money(1)),
                metadata=mallory,
            ),
            "TopUp replay": s.TopUp(
                pb.TopUpRequest(idempotency_key=idem, account_id=a_wallet, channel="test_bank", amount=money(10_000)),
                metadata=mallory,
            ),
            "Payout": s.Payout(
                pb.PayoutRequest(
                    idempotency_key=key(),
                    account_id=a_wallet,
                    channel="test_bank",
                    amount=money(1),
                    destination_token="tok",
                ),
                metadata=mallory,
            ),
            "CreatePayment": s.CreatePayment(
                pb.CreatePaymentRequest(
                    idempotency_key=key(),
                    payer_account_id=a_wallet,
                    payee_account_id=b_wallet,
                    amount=money(1),
                    capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                ),
                metadata=mallory,
            ),
            "GetPayment": s.GetPayment(pb.GetPaymentRequest(payment_id=paid.payment_id), metadata=mallory),
            "ListPayments": s.ListPayments(pb.ListPaymentsRequest(account_id=a_wallet), metadata=mallory),
            "ListLedgerEntries": s.ListLedgerEntries(
                pb.ListLedgerEntriesRequest(account_id=a_wallet), metadata=mallory
            ),
        }
        for name, call in calls.items():
            refused = await refusal(call)
            assert (refused.code, refused.reason) == DENIED, name

        # The parties and support are served.
        for party in (alice, bob):
            got = await s.GetPayment(
                pb.GetPaymentRequest(payment_id=paid.payment_id), metadata=bearer(issuer.customer(party))
            )
            assert got.payment.payment_id == paid.payment_id
        support = bearer(issuer.mint("support"))
        assert (
            await s.GetAccount(pb.GetAccountRequest(account_id=a_wallet), metadata=support)
        ).account.owner_id == alice
        assert len((await s.ListPayments(pb.ListPaymentsRequest(account_id=b_wallet), metadata=support)).payments) == 1
        assert await c.triple(a_wallet) == (9_000, 0, 9_000)  # nothing Mallory tried moved money
        await pay.check_books()


async def test_customers_read_the_ledger_of_their_own_accounts_only(databases, tmp_path: Path) -> None:
    """The payments README promises customers their own ledger (a statement of their wallet): the owner's
    token reads its entries, support reads them to answer the owner, another customer is refused."""
    async with payments_mesh(databases, tmp_path) as pay:
        c, issuer = pay.client, pay.mesh.issuer
        alice, bob = _owner(), _owner()
        a_wallet, b_wallet = await c.wallet(alice), await c.wallet(bob)
        await c.top_up(a_wallet, 10_000)
        await c.pay(a_wallet, b_wallet, 1_000)

        def entries(account: str, token: str) -> Any:
            return c.stub.ListLedgerEntries(pb.ListLedgerEntriesRequest(account_id=account), metadata=bearer(token))

        own = await entries(a_wallet, issuer.customer(alice))
        assert sorted(e.amount_minor_units for e in own.entries) == [-1_000, 10_000]
        assert {e.account_id for e in own.entries} == {a_wallet}
        assert len((await entries(a_wallet, issuer.mint("support"))).entries) == 2
        refused = await refusal(entries(a_wallet, issuer.customer(bob)))
        assert (refused.code, refused.reason) == DENIED


async def test_merchants_capture_void_and_refund_only_payments_to_their_own_accounts(databases, tmp_path: Path) -> None:
    """The capture permission is every merchant's; whose payments it covers is payments' check: another
    merchant's token is PERMISSION_DENIED on capture, void and refund, and nothing moves; the payee's own
    token is served (also for a replay of its own key)."""
    async with payments_mesh(databases, tmp_path) as pay:
        c, issuer = pay.client, pay.mesh.issuer
        payer, shop_owner = _owner(), _owner()
        wallet, shop = await c.wallet(payer), await c.merchant(shop_owner)
        await c.top_up(wallet, 10_000)
        held = await c.pay(wallet, shop, 3_000, mode=pb.CAPTURE_MODE_MANUAL)
        held_too = await c.pay(wallet, shop, 1_000, mode=pb.CAPTURE_MODE_MANUAL)
        captured = await c.pay(wallet, shop, 2_000)
        before = (await c.triple(wallet), await c.triple(shop))
        s = c.stub
        rival = bearer(issuer.customer(_owner(), role="enterprise"))  # a merchant, of another shop
        capture_key = key()
        calls = {
            "CapturePayment": s.CapturePayment(
                pb.CapturePaymentRequest(idempotency_key=capture_key, payment_id=held.payment_id), metadata=rival
            ),
            "VoidPayment": s.VoidPayment(
                pb.VoidPaymentRequest(idempotency_key=key(), payment_id=held.payment_id), metadata=rival
            ),
            "RefundPayment": s.RefundPayment(
                pb.RefundPaymentRequest(idempotency_key=key(), payment_id=captured.payment_id, reason="not mine"),
                metadata=rival,
            ),
        }
        for name, call in calls.items():
            refused = await refusal(call)
            assert (refused.code, refused.reason) == DENIED, name
        assert (await c.triple(wallet), await c.triple(shop)) == before  # nothing the rival tried moved money

        own = bearer(issuer.customer(shop_owner, role="enterprise"))
        done = await s.CapturePayment(
            pb.CapturePaymentRequest(idempotency_key=capture_key, payment_id=held.payment_id), metadata=own
        )
        assert done.payment.status == pb.PAYMENT_STATUS_CAPTURED
        again = await s.CapturePayment(
            pb.CapturePaymentRequest(idempotency_key=capture_key, payment_id=held.payment_id), metadata=own
        )
        assert again == done
        voided = await s.VoidPayment(
            pb.VoidPaymentRequest(idempotency_key=key(), payment_id=held_too.payment_id), metadata=own
        )
        assert voided.payment.status == pb.PAYMENT_STATUS_VOIDED
        refunded = await s.RefundPayment(
            pb.RefundPaymentRequest(idempotency_key=key(), payment_id=captured.payment_id, reason="returned"),
            metadata=own,
        )
        assert refunded.refund.amount.minor_units == 2_000
        # A payment that does not exist is NOT_FOUND, not a permission question.
        missing = await refusal(
            s.VoidPayment(pb.VoidPaymentRequest(idempotency_key=key(), payment_id="no-such"), metadata=rival)
        )
        assert missing.code == grpc.StatusCode.NOT_FOUND
        await pay.check_books()


async def test_an_institution_batches_transfers_only_out_of_its_own_accounts(databases, tmp_path: Path) -> None:
    """A customer's batch naming someone else's account as a source is PERMISSION_DENIED as a whole, nothing
    moves; out of its own account it is served (to anyone's account)."""
    async with payments_mesh(databases, tmp_path) as pay:
        c, issuer = pay.client, pay.mesh.issuer
        payroll_owner, victim, employee = _owner(), _owner(), _owner()
        payroll, savings, salary = await c.wallet(payroll_owner), await c.wallet(victim), await c.wallet(employee)
        await c.top_up(payroll, 10_000)
        await c.top_up(savings, 10_000)
        institution = bearer(issuer.customer(payroll_owner, role="institution"))

        def batch(*sources: str) -> Any:
            return c.stub.BatchCreateTransfers(
                pb.BatchCreateTransfersRequest(
                    idempotency_key=key(),
                    transfers=[
                        pb.TransferSpec(
                            reference=f"r{n}", from_account_id=source, to_account_id=salary, amount=money(100)
                        )
                        for n, source in enumerate(sources)
                    ],
                ),
                metadata=institution,
            )

        await c.top_up(payroll, 1)  # the platform's clearing account for the channel exists from here on
        for sources in ((savings,), (payroll, savings), ("clearing:test_bank:CNY",)):
            refused = await refusal(batch(*sources))
            assert (refused.code, refused.reason) == DENIED, sources
        assert (await c.triple(savings), await c.triple(salary)) == ((10_000, 0, 10_000), (0, 0, 0))
        reply = await batch(payroll, payroll)
        assert (reply.posted_count, reply.refused_count) == (2, 0)
        assert await c.triple(salary) == (200, 0, 200)
        assert await c.triple(payroll) == (9_801, 0, 9_801)
        await pay.check_books()


async def test_customers_open_only_the_accounts_their_kind_may_hold(databases, tmp_path: Path) -> None:
    """Personal: wallets only; enterprise: also merchant accounts; platform accounts: admins only."""
    async with payments_mesh(databases, tmp_path) as pay:
        s, issuer = pay.client.stub, pay.mesh.issuer

        def open_as(role: str, kind: int) -> Any:
            sub = _owner()
            # Customers must name themselves (the platform's check); admins open ownerless platform accounts.
            owner = "" if role == "admin" else sub
            return s.OpenAccount(
                pb.OpenAccountRequest(idempotency_key=key(), owner_id=owner, kind=kind, currency_code="CNY"),
                metadata=bearer(issuer.mint(role, sub=sub)),
            )

        assert (
            await open_as("personal", pb.ACCOUNT_KIND_CUSTOMER_WALLET)
        ).account.kind == pb.ACCOUNT_KIND_CUSTOMER_WALLET
        refused = await refusal(open_as("personal", pb.ACCOUNT_KIND_MERCHANT))
        assert (refused.code, refused.reason) == DENIED
        assert (await open_as("enterprise", pb.ACCOUNT_KIND_MERCHANT)).account.kind == pb.ACCOUNT_KIND_MERCHANT
        for role in ("personal", "enterprise", "institution"):
            for kind in (pb.ACCOUNT_KIND_PLATFORM_FEE, pb.ACCOUNT_KIND_RISK_RESERVE):
                refused = await refusal(open_as(role, kind))
                assert (refused.code, refused.reason) == DENIED, (role, kind)
        assert (await open_as("admin", pb.ACCOUNT_KIND_PLATFORM_FEE)).account.kind == pb.ACCOUNT_KIND_PLATFORM_FEE


async def test_limits_follow_the_tier_in_the_token(databases, tmp_path: Path) -> None:
    """The paying customer's token tier decides the limits, over payments' table; no tier in the token:
    the table (which also serves operators and services)."""
    limits = {
        "low": {"CNY": {"single": 10_000, "daily_amount": 100_000, "daily_count": 100, "top_up": 50_000}},
        "high": {"CNY": {"single": 1_000, "daily_amount": 100_000, "daily_count": 100, "top_up": 50_000}},
    }
    async with payments_mesh(databases, tmp_path, tier_limits=limits, default_tier="low") as pay:
        c, issuer, book = pay.client, pay.mesh.issuer, pay.mesh.book
        tiered, untiered = _owner(), _owner()
        await set_tier(pay.app.engine, tiered, "low")  # stale copy: the token says high
        await set_tier(pay.app.engine, untiered, "high")
        book.tiers[tiered] = "high"
        risky, plain, shop = await c.wallet(tiered), await c.wallet(untiered), await c.wallet()
        for account in (risky, plain):
            await c.top_up(account, 50_000)
        over = await refusal(c.pay(risky, shop, 1_001))
        assert (over.code, over.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LIMIT_EXCEEDED")
        assert "tier high" in over.details
        over = await refusal(c.pay(plain, shop, 1_001))  # no tier claim: the table's "high"
        assert "tier high" in over.details
        low = bearer(issuer.customer(tiered, tier="low"))
        reply = await c.stub.CreatePayment(
            pb.CreatePaymentRequest(
                idempotency_key=key(),
                payer_account_id=risky,
                payee_account_id=shop,
                amount=money(5_000),
                capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
            ),
            metadata=low,
        )
        assert reply.payment.status == pb.PAYMENT_STATUS_CAPTURED
        await pay.check_books()


async def test_malformed_risk_context_is_invalid_argument_naming_each_field(databases, tmp_path: Path) -> None:
    """Payments checks the device, IP and country itself rather than forwarding junk risk would refuse."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        payer, payee = await c.wallet(), await c.wallet()
        await c.top_up(payer, 10_000)

        def create(**context: str) -> Any:
            return c.stub.CreatePayment(
                pb.CreatePaymentRequest(
                    idempotency_key=key(),
                    payer_account_id=payer,
                    payee_account_id=payee,
                    amount=money(100),
                    capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                    risk_context=pb.RiskContext(**context),
                )
            )

        bad = await refusal(create(ip_address="300.1.2.3", ip_country="C1"))
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.fields == ["risk_context.ip_address", "risk_context.ip_country"]
        too_long = await refusal(create(device_id="d" * 65, ip_country="CHN"))  # past the contract's bounds
        assert too_long.fields == ["risk_context.device_id", "risk_context.ip_country"]
        for context in ({"ip_address": "not an ip"}, {"ip_country": "CHN"}, {"device_id": "dev\n1"}):
            assert (await refusal(create(**context))).code == grpc.StatusCode.INVALID_ARGUMENT, context
        good = await create(device_id="phone-1", ip_address="2001:db8::1", ip_country="cn")
        assert good.payment.status == pb.PAYMENT_STATUS_CAPTURED
        assert await c.triple(payer) == (9_900, 0, 9_900)
        await pay.check_books()


async def test_risk_refusing_the_call_is_not_treated_as_risk_unavailable(databases, tmp_path: Path) -> None:
    """Risk answering UNAUTHENTICATED (here: payments holds a wrong service credential) is a fault, not an
    outage: with the "review" policy nothing is held; the payment is refused UNAVAILABLE and nothing moves."""
    async with payments_mesh(
        databases, tmp_path, risk_unavailable_policy="review", service_credential="payments.not-the-right-mac"
    ) as pay:
        c = pay.client
        payer, payee = await c.wallet(), await c.wallet()
        await c.top_up(payer, 10_000)
        refused = await refusal(c.pay(payer, payee, 2_000))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "RISK_UNAVAILABLE")
        assert await c.triple(payer) == (10_000, 0, 10_000)
        assert await c.triple(payee) == (0, 0, 0)
        await pay.check_books()


class _RecordingRisk(risk_grpc.RiskServiceServicer):
    """Stands in for risk (behind the enforcing guard): approves and records what payments sent."""

    def __init__(self) -> None:
        self.requests: list[risk_pb.AssessPaymentRequest] = []

    async def AssessPayment(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return risk_pb.AssessPaymentResponse(
            assessment=risk_pb.Assessment(
                assessment_id=uuid.uuid4().hex, payment_id=request.payment_id, decision=risk_pb.DECISION_APPROVE
            )
        )


async def test_risk_hears_the_payers_token_tier_and_synthetic_probes(databases, tmp_path: Path) -> None:
    """payer_tier comes from the payer's token; payments between the configured probe owners' accounts are
    synthetic, others never (a probe paying a customer included), whatever the caller says."""
    issuer = await Issuer().start()
    recorder = _RecordingRisk()
    risk = await create_server(
        ServiceSettings(host="127.0.0.1", port=0, **issuer.settings()),
        [
            Registration(
                recorder,
                risk_grpc.add_RiskServiceServicer_to_server,
                risk_pb.DESCRIPTOR.services_by_name["RiskService"],
            )
        ],
    )
    probe_owner = "rollout-probe"
    extra = {
        "tier_limits": GENEROUS_LIMITS,
        "risk_target": f"127.0.0.1:{risk.port}",
        "synthetic_owner_ids": [probe_owner, "rollout-probe-payee"],
    }
    try:
        async with running_mesh(databases, tmp_path, names=("payments",), payments_extra=extra, issuer=issuer) as mesh:
            from tests.payments.harness import Client

            c = Client(mesh.channel("payments"))
            customer, shop = _owner(), _owner()
            mesh.book.tiers[customer] = "medium"
            payer, probe, payee = await c.wallet(customer), await c.wallet(probe_owner), await c.wallet(shop)
            probe_payee = await c.wallet("rollout-probe-payee")
            await c.top_up(payer, 10_000)
            await c.top_up(probe, 10_000)
            await c.pay(payer, payee, 100)
            await c.pay(probe, probe_payee, 1)
            await c.pay(probe, payee, 1)
        first, second, third = recorder.requests
        assert (first.payer_user_id, first.payer_tier, first.synthetic) == (customer, risk_pb.RISK_TIER_MEDIUM, False)
        assert (second.payer_user_id, second.synthetic) == (probe_owner, True)
        assert (third.payer_user_id, third.synthetic) == (probe_owner, False)
    finally:
        await risk.server.stop(0)
        for authorizer in risk.authorizers:
            await authorizer.close()
        await issuer.stop()
