"""The thin slice through all four services, as a client would run it: onboard two users and pay."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import grpc
from opentelemetry import trace

from finmesh.common.v1 import money_pb2
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.notify.v1 import notify_service_pb2 as no_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as no_grpc
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.rpc_tracing import TracingClientInterceptor


@dataclass(frozen=True)
class Person:
    legal_name: str
    id_number: str
    phone: str
    email: str


# Synthetic people: identity numbers with valid check digits, reserved-looking contacts.
ALICE = Person("测试甲", "11010519491231002X", "+8613800138000", "alice@example.com")
BOB = Person("测试乙", "440305198511204563", "+8613900139000", "bob@example.com")


@dataclass
class SliceResult:
    trace_id: str
    payer_user_id: str
    payee_user_id: str
    payer_account_id: str
    payee_account_id: str
    payment_id: str
    top_up_minor_units: int
    paid_minor_units: int
    payee_receipts: int


def _channel(target: str, provider: trace.TracerProvider | None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, interceptors=[TracingClientInterceptor(provider)])


async def run_slice(targets: dict[str, str], *, people: tuple[Person, Person] = (ALICE, BOB),
                    top_up: int = 100_000, pay: int = 12_345, wait_seconds: float = 10.0,
                    tracer_provider: trace.TracerProvider | None = None) -> SliceResult:
    """Register two users, open CNY wallets, top one up, pay the other, wait for notify's receipt.

    The whole run is one trace, rooted in a client span from `tracer_provider` (default: global).
    """
    run = uuid.uuid4().hex[:8]
    tracer = trace.get_tracer("finmesh.cli", tracer_provider=tracer_provider)
    async with _channel(targets["identity"], tracer_provider) as id_ch, \
            _channel(targets["payments"], tracer_provider) as pay_ch, \
            _channel(targets["notify"], tracer_provider) as no_ch:
        identity = id_grpc.IdentityServiceStub(id_ch)
        payments = pay_grpc.PaymentsServiceStub(pay_ch)
        notify = no_grpc.NotifyServiceStub(no_ch)
        with tracer.start_as_current_span("onboard and pay") as root:
            trace_id = format(root.get_span_context().trace_id, "032x")
            users = []
            for i, person in enumerate(people):
                reply = await identity.RegisterUser(id_pb.RegisterUserRequest(
                    idempotency_key=f"{run}-register-{i}", kind=id_pb.USER_KIND_PERSONAL,
                    legal_name=person.legal_name, id_number=person.id_number, phone=person.phone,
                    email=person.email, password=f"correct horse {run}", locale="zh-CN",
                ), timeout=10)
                users.append(reply.user.user_id)
            wallets = []
            for i, user_id in enumerate(users):
                reply = await payments.OpenAccount(pay_pb.OpenAccountRequest(
                    idempotency_key=f"{run}-open-{i}", owner_id=user_id,
                    kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET, currency_code="CNY",
                ), timeout=5)
                wallets.append(reply.account.account_id)
            await payments.TopUp(pay_pb.TopUpRequest(
                idempotency_key=f"{run}-topup", account_id=wallets[0], channel="test_bank",
                amount=money_pb2.Money(currency_code="CNY", minor_units=top_up),
            ), timeout=5)
            payment = await payments.CreatePayment(pay_pb.CreatePaymentRequest(
                idempotency_key=f"{run}-pay", payer_account_id=wallets[0], payee_account_id=wallets[1],
                amount=money_pb2.Money(currency_code="CNY", minor_units=pay),
                capture_mode=pay_pb.CAPTURE_MODE_AUTOMATIC, description="demo payment",
            ), timeout=5)
        received = await _wait_for_receipt(notify, users[1], wait_seconds)
    return SliceResult(trace_id, users[0], users[1], wallets[0], wallets[1], payment.payment.payment_id,
                       top_up, pay, received)


async def _wait_for_receipt(notify: no_grpc.NotifyServiceStub, user_id: str, wait_seconds: float) -> int:
    """Payment receipts notify recorded for `user_id` (delivery is asynchronous: poll briefly)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        reply = await notify.ListNotifications(no_pb.ListNotificationsRequest(user_id=user_id), timeout=5)
        receipts = [n for n in reply.notifications if n.template == "payment_received"]
        if receipts or loop.time() > deadline:
            return len(receipts)
        await asyncio.sleep(0.1)
