"""What every part of the servicer shares: its dependencies, request checks, page tokens, command submission."""

from __future__ import annotations

import base64
import json
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import Message

from finmesh.payments.clients.banks import Banks
from finmesh.payments.clients.risk import RiskClient
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.domain.limits import BankCapPolicy, LimitPolicy
from finmesh.payments.store.reads import Reads
from finmesh.payments.usecases import ownership
from finmesh.payments.usecases.ledger_writer import Action, Command, LedgerWriter
from finmesh.payments.usecases.payment_prechecks import PaymentPrechecks
from finmesh.payments.usecases.payments import LimitRules
from finmesh.platform.auth.context import acting_as, current_principal
from finmesh.platform.errors import FieldViolation, InvalidArgument
from finmesh.platform.money import validate_amount
from finmesh.platform.observability import synthetic
from finmesh.platform.storage.idempotency import (
    IdempotencyStore,
    caller_scope,
    derived_id_name,
    replay_stored,
    request_fingerprint,
    validate_key,
)

MAX_ID = 64
MAX_PAGE = 500

# A handler's gRPC context (request and response types left open: each handler names its own request).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass
class Dependencies:
    reads: Reads
    writer: LedgerWriter
    idempotency: IdempotencyStore
    risk: RiskClient
    banks: Banks
    settings: PaymentsSettings

    limits: LimitRules = field(init=False)
    bank_caps: BankCapPolicy = field(init=False)
    prechecks: PaymentPrechecks = field(init=False)

    def __post_init__(self) -> None:
        policy = LimitPolicy(self.settings.limit_table())
        self.limits = LimitRules(policy, self.settings.limits_utc_offset_minutes)
        self.bank_caps = BankCapPolicy(self.settings.bank_cap_table(), policy)
        self.prechecks = PaymentPrechecks(self.reads, self.writer, self.limits)


class ServicerBase:
    deps: Dependencies

    async def replay(self, method: str, request: Any, response_type: type[Message]) -> Any:
        """The stored answer to this request's key (a stored refusal is raised), or None."""
        validate_key(request.idempotency_key)
        prior = await self.deps.reads.stored_answer(method, caller_scope(request), request.idempotency_key)
        return None if prior is None else replay_stored(prior, request_fingerprint(request), response_type)

    async def require_test_accounts(self, context: Any, account_ids: list[str]) -> None:
        """A call marked synthetic (finmesh.platform.observability.synthetic) may touch test accounts only
        (usecases.ownership). Unmarked calls pass without a read."""
        if synthetic.requested(context):
            await ownership.require_test_accounts(self.deps.reads, account_ids, self.deps.writer.test_owners)

    async def require_test_payment(self, context: Any, payment_id: str) -> None:
        """As require_test_accounts, for both parties of a payment (an unknown payment is left to the handler)."""
        if synthetic.requested(context):
            await ownership.require_test_payment(self.deps.reads, payment_id, self.deps.writer.test_owners)

    async def submit(
        self,
        method: str,
        request: Any,
        response_type: type[Message],
        action: Action,
        render: Callable[[Any], Message],
        *,
        record_success: bool = True,
        exclusive: bool = False,
        accounts: tuple[str, ...] = (),
        fingerprint: bytes = b"",
    ) -> Any:
        """Run `action` in the ledger writer under the request's idempotency key (`fingerprint`: the request's,
        when the caller has it already)."""
        validate_key(request.idempotency_key)
        reply = await self.deps.writer.submit(
            Command(
                method=method,
                scope=caller_scope(request),
                key=request.idempotency_key,
                fingerprint=fingerprint or request_fingerprint(request),
                response_type=response_type,
                action=_as_caller(action),
                render=render,
                record_success=record_success,
                exclusive=exclusive,
                accounts=accounts,
            )
        )
        if record_success and method in self.deps.settings.failpoint_kill_after_commit:
            # Fault injection for crash tests: the answer is committed, the reply never leaves.
            os.kill(os.getpid(), signal.SIGKILL)
        return reply


def _as_caller(action: Action) -> Action:
    """`action` run as the current caller: the writer's task does not share the handler's context (the
    tier source reads the caller's token tier)."""
    principal = current_principal()
    if principal is None:
        return action

    async def run(uow: Any) -> Any:
        with acting_as(principal):
            return await action(uow)

    return run


def key_derived_id(namespace: uuid.UUID, method: str, request: Any) -> str:
    """An id derived from the caller's key (a payment's, a settlement batch's): the same on every retry by
    that caller, another for the same key from another caller."""
    return str(uuid.uuid5(namespace, derived_id_name(method, caller_scope(request), request.idempotency_key)))


def valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID and value.isprintable()


def require_id(value: str, field: str) -> None:
    if not valid_id(value):
        raise InvalidArgument(FieldViolation(field, f"required, at most {MAX_ID} printable characters"))


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
    return min(requested or 50, MAX_PAGE)


def amount_violations(request: Any, field: str = "amount", *, required: bool = True) -> list[FieldViolation]:
    if not request.HasField(field):
        return [FieldViolation(field, "required")] if required else []
    money = getattr(request, field)
    return validate_amount(money.currency_code, money.minor_units, field)


def encode_token(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps([str(p) for p in parts]).encode()).decode()


def decode_token(token: str, arity: int) -> list[str] | None:
    """The parts of a page token, None for no token; INVALID_ARGUMENT for one we did not issue."""
    if not token:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        parts = None
    if not isinstance(parts, list) or len(parts) != arity or not all(isinstance(p, str) for p in parts):
        raise InvalidArgument(FieldViolation("page_token", "not a token this service issued"))
    return parts


def decode_time_token(token: str) -> tuple[datetime, str] | None:
    parts = decode_token(token, 2)
    if parts is None:
        return None
    try:
        return datetime.fromisoformat(parts[0]), parts[1]
    except ValueError:
        raise InvalidArgument(FieldViolation("page_token", "not a token this service issued")) from None
