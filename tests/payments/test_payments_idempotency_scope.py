"""Idempotency keys belong to their caller (issue 16, defect 5): two customers may pick the same key.

Each customer's key names their own operation, as Stripe scopes keys per account: the same key from another
customer is an independent operation, never IDEMPOTENCY_KEY_REUSED (which let one customer block another's
keys and learn which keys exist). Within one caller nothing changes: a replay answers the stored reply byte
for byte, another request with the key is refused.

Raw calls on a bare channel: the replies are compared as the bytes on the wire, each call presenting the token
the test chose.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc

from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.auth import bearer
from tests.payments.harness import key, money, payments_mesh, refusal

_SERVICE = "/finmesh.payments.v1.PaymentsService/"


def _raw(channel: grpc.aio.Channel, method: str) -> Any:
    """A call of `method` answering the reply's bytes as they arrived."""
    return channel.unary_unary(
        _SERVICE + method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=None
    )


async def test_two_customers_with_one_key_each_get_their_own_operation(databases, tmp_path: Path) -> None:
    """Alice and Bob use one key for a top-up, a payout and a payment, each on their own accounts: all six
    succeed with their own answers; every replay is byte-identical to its first answer; a different request
    with the key is still refused for the caller who used it."""
    async with payments_mesh(databases, tmp_path) as pay:
        c, issuer = pay.client, pay.mesh.issuer
        raw = pay.mesh.bare_channel("payments")
        alice, bob = uuid.uuid4().hex, uuid.uuid4().hex
        wallets = {alice: await c.wallet(alice), bob: await c.wallet(bob)}
        shop = await c.merchant(uuid.uuid4().hex)
        shared = key()
        amounts = {alice: 10_000, bob: 25_000}

        def as_(user: str) -> tuple[tuple[str, str], ...]:
            return bearer(issuer.customer(user))  # a fresh token each time: the scope is the subject

        requests: dict[str, dict[str, Any]] = {}
        for user in (alice, bob):
            requests[user] = {
                "TopUp": pb.TopUpRequest(
                    idempotency_key=shared, account_id=wallets[user], channel="test_bank", amount=money(amounts[user])
                ),
                "Payout": pb.PayoutRequest(
                    idempotency_key=shared,
                    account_id=wallets[user],
                    channel="test_bank",
                    amount=money(amounts[user] // 10),
                    destination_token="tok-dest-1",
                ),
                "CreatePayment": pb.CreatePaymentRequest(
                    idempotency_key=shared,
                    payer_account_id=wallets[user],
                    payee_account_id=shop,
                    amount=money(amounts[user] // 5),
                    capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                ),
            }

        first: dict[tuple[str, str], bytes] = {}
        for method in ("TopUp", "Payout", "CreatePayment"):
            for user in (alice, bob):
                first[(user, method)] = await _raw(raw, method)(requests[user][method], metadata=as_(user))

        # Each answer is the caller's own operation.
        tops = {u: pb.TopUpResponse.FromString(first[(u, "TopUp")]) for u in (alice, bob)}
        outs = {u: pb.PayoutResponse.FromString(first[(u, "Payout")]) for u in (alice, bob)}
        paid = {u: pb.CreatePaymentResponse.FromString(first[(u, "CreatePayment")]).payment for u in (alice, bob)}
        for user in (alice, bob):
            assert tops[user].operation.account_id == wallets[user]
            assert tops[user].operation.amount.minor_units == amounts[user]
            assert outs[user].operation.amount.minor_units == amounts[user] // 10
            assert paid[user].payer_account_id == wallets[user]
            assert paid[user].amount.minor_units == amounts[user] // 5
            assert paid[user].status == pb.PAYMENT_STATUS_CAPTURED
        assert tops[alice].operation.operation_id != tops[bob].operation.operation_id
        assert outs[alice].operation.operation_id != outs[bob].operation.operation_id
        assert paid[alice].payment_id != paid[bob].payment_id
        for user in (alice, bob):
            total = amounts[user] - amounts[user] // 10 - amounts[user] // 5
            assert await c.triple(wallets[user]) == (total, 0, total)

        # Replays: the same bytes, whoever replays first, and nothing moves again.
        for method in ("CreatePayment", "Payout", "TopUp"):
            for user in (bob, alice):
                again = await _raw(raw, method)(requests[user][method], metadata=as_(user))
                assert again == first[(user, method)], (method, user)

        # The same caller with another request under the key is still refused.
        other = pb.CreatePaymentRequest()
        other.CopyFrom(requests[bob]["CreatePayment"])
        other.amount.minor_units += 1
        refused = await refusal(c.stub.CreatePayment(other, metadata=as_(bob)))
        assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")
        for user in (alice, bob):
            total = amounts[user] - amounts[user] // 10 - amounts[user] // 5
            assert await c.triple(wallets[user]) == (total, 0, total)
        await pay.check_books()


async def test_a_key_used_by_one_customer_reveals_nothing_to_another(databases, tmp_path: Path) -> None:
    """Bob cannot learn that Alice used a key: his call with it is served as his own (here: a refusal of his
    own, for his empty wallet), not IDEMPOTENCY_KEY_REUSED; his own retry then replays his refusal."""
    async with payments_mesh(databases, tmp_path) as pay:
        c, issuer = pay.client, pay.mesh.issuer
        alice, bob = uuid.uuid4().hex, uuid.uuid4().hex
        a_wallet, b_wallet = await c.wallet(alice), await c.wallet(bob)
        shop = await c.merchant(uuid.uuid4().hex)
        await c.top_up(a_wallet, 5_000)
        shared = key()
        await c.pay(a_wallet, shop, 1_000, idem=shared)

        probe = pb.CreatePaymentRequest(
            idempotency_key=shared,
            payer_account_id=b_wallet,
            payee_account_id=shop,
            amount=money(1_000),
            capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
        )
        for _ in range(2):
            refused = await refusal(c.stub.CreatePayment(probe, metadata=bearer(issuer.customer(bob))))
            assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
        await c.top_up(b_wallet, 5_000)
        # Bob's refusal is his key's recorded answer (a refusal stays a refusal), independent of Alice's.
        refused = await refusal(c.stub.CreatePayment(probe, metadata=bearer(issuer.customer(bob))))
        assert refused.reason == "INSUFFICIENT_FUNDS"
        assert await c.triple(a_wallet) == (4_000, 0, 4_000)
        await pay.check_books()
