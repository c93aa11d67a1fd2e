"""What one load call does: a payment between test accounts, a balance read, a synthetic registration, or a
weighted mix of them. Each scenario turns a context into the engine's `call(i)`.

Payments go round a ring of test accounts (account k pays account k+1) so every account pays and is paid about
equally, no single account's ledger rows take every write, and the money only ever circles among test accounts.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TypeVar

from finmesh.common.v1 import money_pb2
from finmesh.identity.domain.id_number import check_char
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.load.accounts import TestAccounts
from finmesh.load.engine import Call
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc

Stub = TypeVar("Stub")
NAMES = ("payment", "balance", "registration")
# A payment "went through" when captured, held for capture, or sent to review (funds held).
_ACCEPTED = {pay_pb.PAYMENT_STATUS_CAPTURED, pay_pb.PAYMENT_STATUS_AUTHORIZED, pay_pb.PAYMENT_STATUS_IN_REVIEW}
# Small amounts, the same for every payer in one round of the ring, so balances stay where they started.
_AMOUNTS = (1, 2, 3, 5, 8)


class UnexpectedOutcome(Exception):
    """The RPC answered OK but not with what the scenario expects (e.g. a declined payment)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code_name = code


@dataclass
class Context:
    metadata: tuple[tuple[str, str], ...]
    payments: list[pay_grpc.PaymentsServiceAsyncStub] = field(default_factory=list)
    identity: list[id_grpc.IdentityServiceAsyncStub] = field(default_factory=list)
    accounts: TestAccounts | None = None
    timeout_s: float = 10.0
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


def _pick(stubs: list[Stub], i: int, what: str) -> Stub:
    if not stubs:
        raise ValueError(f"this scenario needs a {what} target")
    return stubs[i % len(stubs)]


def _accounts(ctx: Context) -> tuple[str, ...]:
    if ctx.accounts is None or len(ctx.accounts.accounts) < 2:
        raise ValueError("this scenario needs test accounts (--accounts-file, or a local mesh that provisions them)")
    return ctx.accounts.accounts


def payment(ctx: Context) -> Call:
    accounts = _accounts(ctx)
    n = len(accounts)
    currency = ctx.accounts.currency if ctx.accounts else "CNY"

    async def call(i: int) -> None:
        reply = await _pick(ctx.payments, i, "payments").CreatePayment(
            pay_pb.CreatePaymentRequest(
                idempotency_key=f"load-{ctx.run}-pay-{i}",  # fresh per call: every call is a new payment
                payer_account_id=accounts[i % n],
                payee_account_id=accounts[(i + 1) % n],
                amount=money_pb2.Money(currency_code=currency, minor_units=_AMOUNTS[(i // n) % len(_AMOUNTS)]),
                capture_mode=pay_pb.CAPTURE_MODE_AUTOMATIC,
                description="finmesh load synthetic payment",
            ),
            metadata=ctx.metadata,
            timeout=ctx.timeout_s,
        )
        if reply.payment.status not in _ACCEPTED:
            raise UnexpectedOutcome(pay_pb.PaymentStatus.Name(reply.payment.status))

    return call


def balance(ctx: Context) -> Call:
    accounts = _accounts(ctx)

    async def call(i: int) -> None:
        await _pick(ctx.payments, i, "payments").GetAccount(
            pay_pb.GetAccountRequest(account_id=accounts[i % len(accounts)]),
            metadata=ctx.metadata,
            timeout=ctx.timeout_s,
        )

    return call


@dataclass(frozen=True)
class SyntheticPeople:
    """Registration data no earlier call of this run used: identity refuses a second registration of anyone.

    Example.com mail, a phone range per run, identity numbers with valid check characters whose birth date
    and sequence come from the call index (so no two calls of a run collide) after a per-run random base.
    """

    run: str
    base_birth: date
    phone_prefix: str
    password: str = field(repr=False)

    @classmethod
    def new(cls, run: str) -> SyntheticPeople:
        base = date(1960, 1, 1) + timedelta(days=random.randrange(12_000))
        return cls(run, base, f"+86170{random.randrange(1000):03d}", "load-" + secrets.token_urlsafe(12))

    def request(self, i: int) -> id_pb.RegisterUserRequest:
        birth = self.base_birth + timedelta(days=i // 1000)
        first17 = f"110105{birth:%Y%m%d}{i % 1000:03d}"
        return id_pb.RegisterUserRequest(
            idempotency_key=f"load-{self.run}-register-{i}",
            kind=id_pb.USER_KIND_PERSONAL,
            legal_name="压测用户",
            id_number=first17 + check_char(first17),
            phone=f"{self.phone_prefix}{i:06d}",
            email=f"load-{self.run}-{i}@example.com",
            password=self.password,
            locale="zh-CN",
        )


def registration(ctx: Context) -> Call:
    people = SyntheticPeople.new(ctx.run)

    async def call(i: int) -> None:
        await _pick(ctx.identity, i, "identity").RegisterUser(
            people.request(i), metadata=ctx.metadata, timeout=ctx.timeout_s
        )

    return call


SCENARIOS: dict[str, Callable[[Context], Call]] = {"payment": payment, "balance": balance, "registration": registration}


def parse_mix(text: str) -> dict[str, int]:
    """`payment=8,balance=2,registration=1` -> weights; unknown names and non-positive weights are refused."""
    weights: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r} in mix (known: {', '.join(NAMES)})")
        try:
            value = int(weight) if weight else 1
        except ValueError:
            raise ValueError(f"weight of {name!r} is not an integer: {weight!r}") from None
        if value <= 0:
            raise ValueError(f"weight of {name!r} must be positive")
        weights[name] = value
    if not weights:
        raise ValueError("empty mix")
    return weights


def mix_order(weights: dict[str, int]) -> list[str]:
    """One cycle of smooth weighted round robin: 8/2/1 spreads balance and registration between payments
    instead of bunching them."""
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0)
    order = []
    for _ in range(total):
        for name, weight in weights.items():
            current[name] += weight
        chosen = max(current, key=lambda n: current[n])
        current[chosen] -= total
        order.append(chosen)
    return order


def mix(ctx: Context, weights: dict[str, int]) -> Call:
    calls = {name: SCENARIOS[name](ctx) for name in weights}
    order = mix_order(weights)
    seen = dict.fromkeys(weights, 0)

    async def call(i: int) -> None:
        name = order[i % len(order)]
        # Each scenario numbers its own calls, so payments keep their ring and registrations their uniqueness.
        own = seen[name]
        seen[name] += 1
        await calls[name](own)

    return call


def build(name: str, ctx: Context, mix_text: str = "") -> Call:
    if name == "mix":
        return mix(ctx, parse_mix(mix_text))
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}")
    return SCENARIOS[name](ctx)


def labeler(name: str, mix_text: str = "") -> Callable[[int], str] | None:
    """For a mix, which scenario call i runs (the engine then reports figures by scenario)."""
    if name != "mix":
        return None
    order = mix_order(parse_mix(mix_text))
    return lambda i: order[i % len(order)]


def needs(name: str, mix_text: str = "") -> set[str]:
    """Which scenarios a run uses (to know which targets and accounts it needs)."""
    return set(parse_mix(mix_text)) if name == "mix" else {name}
