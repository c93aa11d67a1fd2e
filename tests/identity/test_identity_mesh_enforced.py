"""The mesh with auth enforced everywhere: customers pay with their tokens, services call each other
with service tokens from identity (payments -> risk, payments' outbox relay -> notify)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest

from finmesh.common.v1 import money_pb2
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.rpc.guard import reason_of
from tests.identity.harness import identity_env, key, md, new_person, start_enforcing_services


async def _wallet(stub: pay_grpc.PaymentsServiceStub, owner: str, token: str) -> str:
    reply = await stub.OpenAccount(
        pay_pb.OpenAccountRequest(
            idempotency_key=key(), owner_id=owner, kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET, currency_code="CNY"
        ),
        metadata=md(token),
    )
    return reply.account.account_id


async def test_customers_pay_and_services_authenticate_to_each_other(databases, tmp_path: Path) -> None:
    """A verified customer tops up and pays with their own token; payments gets risk's approval and
    notify gets the event with service tokens; an unverified customer may not move money."""
    async with identity_env(databases, tmp_path) as env, AsyncExitStack() as stack:
        targets = await start_enforcing_services(stack, databases, tmp_path, env.target)
        payer, payee, newcomer = new_person(), new_person(), new_person()
        payer_id, payee_id = await env.onboard(payer), await env.onboard(payee)
        newcomer_id = await env.register(newcomer)
        payer_token = (await env.login(payer)).access_token
        payee_token = (await env.login(payee)).access_token
        newcomer_token = (await env.login(newcomer)).access_token
        pay_channel = grpc.aio.insecure_channel(targets["payments"])
        notify_channel = grpc.aio.insecure_channel(targets["notify"])
        stack.push_async_callback(pay_channel.close)
        stack.push_async_callback(notify_channel.close)
        payments = pay_grpc.PaymentsServiceStub(pay_channel)
        src, dst = await _wallet(payments, payer_id, payer_token), await _wallet(payments, payee_id, payee_token)
        await payments.TopUp(
            pay_pb.TopUpRequest(
                idempotency_key=key(),
                account_id=src,
                channel="test_bank",
                amount=money_pb2.Money(currency_code="CNY", minor_units=50_000),
            ),
            metadata=md(payer_token),
        )
        paid = await payments.CreatePayment(
            pay_pb.CreatePaymentRequest(
                idempotency_key=key(),
                payer_account_id=src,
                payee_account_id=dst,
                amount=money_pb2.Money(currency_code="CNY", minor_units=1_234),
                capture_mode=pay_pb.CAPTURE_MODE_AUTOMATIC,
            ),
            metadata=md(payer_token),
        )
        # Approved by risk (payments' risk-unavailable policy would have held it for review instead).
        assert paid.payment.status == pay_pb.PAYMENT_STATUS_CAPTURED, paid.payment
        # The payee's receipt arrived through payments' outbox relay, authenticated at notify.
        notify = notify_grpc.NotifyServiceStub(notify_channel)
        for _ in range(100):
            listed = await notify.ListNotifications(
                notify_pb.ListNotificationsRequest(user_id=payee_id), metadata=md(payee_token)
            )
            if any(n.template == "payment_received" for n in listed.notifications):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the payee's receipt never reached notify")
        # Customers read their own notifications only.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await notify.ListNotifications(
                notify_pb.ListNotificationsRequest(user_id=payee_id), metadata=md(payer_token)
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Onboarding not finished: the token says so, and money does not move.
        wallet = await _wallet(payments, newcomer_id, newcomer_token)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await payments.TopUp(
                pay_pb.TopUpRequest(
                    idempotency_key=key(),
                    account_id=wallet,
                    channel="test_bank",
                    amount=money_pb2.Money(currency_code="CNY", minor_units=100),
                ),
                metadata=md(newcomer_token),
            )
        assert (refused.value.code(), reason_of(refused.value)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "VERIFICATION_REQUIRED",
        )
