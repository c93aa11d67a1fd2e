"""The thin slice through all four services, as a client would run it: onboard two users, log in, pay."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta

import aiohttp
import grpc
from opentelemetry import trace

from finmesh.cli.mesh import Fake
from finmesh.common.v1 import money_pb2
from finmesh.identity.domain.id_number import check_char
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.notify.v1 import notify_service_pb2 as no_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as no_grpc
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.observability.rpc_tracing import TracingClientInterceptor


@dataclass(frozen=True)
class Person:
    legal_name: str
    id_number: str
    phone: str
    email: str


_OLDEST_BIRTH = date(1960, 1, 1)
_BIRTH_SPAN_DAYS = (date(2000, 12, 31) - _OLDEST_BIRTH).days


def new_people() -> tuple[Person, Person]:
    """Two synthetic people (valid check digits, example.com mail) no earlier run registered: identity
    refuses a second registration of anyone, and `finmesh demo` may run again against one mesh."""
    people: list[Person] = []
    for name, region in (("测试甲", "110105"), ("测试乙", "440305")):
        tag = secrets.randbelow(10**8)
        # A random adult birth date as well as a sequence number: with the date fixed there were 1,000 numbers
        # per region, and a bench onboarding several payers per mesh drew a taken one (identity refuses it).
        birth = (_OLDEST_BIRTH + timedelta(days=secrets.randbelow(_BIRTH_SPAN_DAYS))).strftime("%Y%m%d")
        first17 = f"{region}{birth}{secrets.randbelow(1000):03d}"
        people.append(
            Person(name, first17 + check_char(first17), f"+86138{tag:08d}", f"demo-{tag:08d}-{len(people)}@example.com")
        )
    return people[0], people[1]


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
    # user id -> the access token the demo logged in with; kept out of repr so it is never printed.
    tokens: dict[str, str] = field(default_factory=dict, repr=False)
    # Who was onboarded (personal data: out of repr too; tests look for it in logs and spans).
    people: tuple[Person, ...] = field(default=(), repr=False)


def _channel(target: str, provider: trace.TracerProvider | None) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, interceptors=[TracingClientInterceptor(provider, target=target)])


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")


class Handset:
    """Reads the one-time codes the fake SMS provider accepted for a number (its GET /messages)."""

    def __init__(self, sms: Fake, session: aiohttp.ClientSession) -> None:
        self._sms = sms
        self._session = session

    async def count(self, phone: str) -> int:
        return len(await self._messages(phone))

    async def next_code(self, phone: str, seen: int, wait_seconds: float) -> str:
        """The code in the first message to `phone` after the `seen` earlier ones (delivery is asynchronous)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            messages = await self._messages(phone)
            if len(messages) > seen:
                match = _CODE.search(messages[seen]["text"])
                if match is None:
                    raise RuntimeError("the message to the phone carries no six-digit code")
                return match.group(1)
            if loop.time() > deadline:
                raise TimeoutError("no one-time code reached the fake SMS provider; is notify's SMS channel set?")
            await asyncio.sleep(0.1)

    async def _messages(self, phone: str) -> list[dict[str, str]]:
        async with self._session.get(
            f"{self._sms.url}/messages", params={"to": phone}, headers={"Authorization": f"Bearer {self._sms.api_key}"}
        ) as reply:
            reply.raise_for_status()
            return list((await reply.json())["messages"])


async def onboard(
    identity: id_grpc.IdentityServiceAsyncStub,
    handset: Handset,
    person: Person,
    password: str,
    run: str,
    i: int,
    wait_seconds: float,
) -> tuple[str, str]:
    """Register, pass all three checks (identity number at registration, SMS code, real name), then log in
    with password + SMS code. Returns (user id, access token)."""
    reply = await identity.RegisterUser(
        id_pb.RegisterUserRequest(
            idempotency_key=f"{run}-register-{i}",
            kind=id_pb.USER_KIND_PERSONAL,
            legal_name=person.legal_name,
            id_number=person.id_number,
            phone=person.phone,
            email=person.email,
            password=password,
            locale="zh-CN",
        ),
        timeout=10,
    )
    user_id = reply.user.user_id
    seen = await handset.count(person.phone)
    started = await identity.StartVerification(
        id_pb.StartVerificationRequest(
            idempotency_key=f"{run}-verify-{i}", user_id=user_id, channel=id_pb.VERIFICATION_CHANNEL_SMS
        ),
        timeout=10,
    )
    code = await handset.next_code(person.phone, seen, wait_seconds)
    await identity.ConfirmVerification(
        id_pb.ConfirmVerificationRequest(
            idempotency_key=f"{run}-confirm-{i}", verification_id=started.verification_id, code=code
        ),
        timeout=10,
    )
    await identity.CheckRealName(
        id_pb.CheckRealNameRequest(idempotency_key=f"{run}-realname-{i}", user_id=user_id), timeout=10
    )
    tokens = await login(identity, handset, person.phone, password, run, i, wait_seconds)
    return user_id, tokens.access_token


async def login(
    identity: id_grpc.IdentityServiceAsyncStub,
    handset: Handset,
    phone: str,
    password: str,
    run: str,
    i: int,
    wait_seconds: float,
) -> id_pb.TokenPair:
    """Password, then the SMS code the fake provider received: the login's tokens."""
    seen = await handset.count(phone)
    challenge = await identity.Login(
        id_pb.LoginRequest(idempotency_key=f"{run}-login-{i}", login=phone, password=password), timeout=10
    )
    code = await handset.next_code(phone, seen, wait_seconds)
    done = await identity.CompleteLogin(
        id_pb.CompleteLoginRequest(idempotency_key=f"{run}-login2-{i}", challenge_id=challenge.challenge_id, code=code),
        timeout=10,
    )
    return done.tokens


async def run_slice(
    targets: dict[str, str],
    sms: Fake,
    *,
    people: tuple[Person, Person] | None = None,
    top_up: int = 100_000,
    pay: int = 12_345,
    wait_seconds: float = 10.0,
    tracer_provider: trace.TracerProvider | None = None,
) -> SliceResult:
    """Onboard two users (all three checks, codes read from the fake SMS provider `sms`), log both in with
    password + SMS code, open CNY wallets with their own tokens, top one up, pay the other, wait for
    notify's receipt.

    The whole run is one trace, rooted in a client span from `tracer_provider` (default: global).
    Tokens stay in memory: nothing here prints or logs them.
    """
    run = uuid.uuid4().hex[:8]
    people = people or new_people()
    password = f"correct horse {run}"
    tracer = trace.get_tracer("finmesh.cli", tracer_provider=tracer_provider)
    async with (
        _channel(targets["identity"], tracer_provider) as id_ch,
        _channel(targets["payments"], tracer_provider) as pay_ch,
        _channel(targets["notify"], tracer_provider) as no_ch,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        identity = id_grpc.IdentityServiceStub(id_ch)
        payments = pay_grpc.PaymentsServiceStub(pay_ch)
        notify = no_grpc.NotifyServiceStub(no_ch)
        handset = Handset(sms, http)
        with tracer.start_as_current_span("onboard and pay") as root:
            trace_id = format(root.get_span_context().trace_id, "032x")
            users, tokens = [], []
            for i, person in enumerate(people):
                user_id, token = await onboard(identity, handset, person, password, run, i, wait_seconds)
                users.append(user_id)
                tokens.append(token)
            wallets = []
            for i, user_id in enumerate(users):
                reply = await payments.OpenAccount(
                    pay_pb.OpenAccountRequest(
                        idempotency_key=f"{run}-open-{i}",
                        owner_id=user_id,
                        kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                        currency_code="CNY",
                    ),
                    metadata=bearer(tokens[i]),
                    timeout=5,
                )
                wallets.append(reply.account.account_id)
            await payments.TopUp(
                pay_pb.TopUpRequest(
                    idempotency_key=f"{run}-topup",
                    account_id=wallets[0],
                    channel="test_bank",
                    amount=money_pb2.Money(currency_code="CNY", minor_units=top_up),
                ),
                metadata=bearer(tokens[0]),
                timeout=5,
            )
            payment = await payments.CreatePayment(
                pay_pb.CreatePaymentRequest(
                    idempotency_key=f"{run}-pay",
                    payer_account_id=wallets[0],
                    payee_account_id=wallets[1],
                    amount=money_pb2.Money(currency_code="CNY", minor_units=pay),
                    capture_mode=pay_pb.CAPTURE_MODE_AUTOMATIC,
                    description="demo payment",
                ),
                metadata=bearer(tokens[0]),
                timeout=5,
            )
        received = await _wait_for_receipt(notify, users[1], tokens[1], wait_seconds)
    return SliceResult(
        trace_id,
        users[0],
        users[1],
        wallets[0],
        wallets[1],
        payment.payment.payment_id,
        top_up,
        pay,
        received,
        {users[0]: tokens[0], users[1]: tokens[1]},
        tuple(people),
    )


async def _wait_for_receipt(
    notify: no_grpc.NotifyServiceAsyncStub, user_id: str, token: str, wait_seconds: float
) -> int:
    """Payment receipts notify recorded for `user_id`, read with their own token (delivery is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        reply = await notify.ListNotifications(
            no_pb.ListNotificationsRequest(user_id=user_id), metadata=bearer(token), timeout=5
        )
        receipts = [n for n in reply.notifications if n.template == "payment_received"]
        if receipts or loop.time() > deadline:
            return len(receipts)
        await asyncio.sleep(0.1)
