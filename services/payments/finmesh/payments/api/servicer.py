"""PaymentsService servicer: validates requests, keeps idempotency, calls use cases, converts replies."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments import operations
from finmesh.payments.api import convert
from finmesh.payments.clients import PaymentFacts, RiskClient, RiskVerdict
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.domain.ledger import AccountKind
from finmesh.payments.domain.payments import CaptureMode, PaymentRequest, RiskDecision, validate_payment_request
from finmesh.payments.store import ledger
from finmesh.payments.store import payments as payment_rows
from finmesh.payments.store.schema import accounts, idempotency
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.channels import remaining_timeout
from finmesh.platform.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable, Validator
from finmesh.platform.idempotency import IdempotencyStore
from finmesh.platform.logs import get_logger
from finmesh.platform.money import Money, parse_amount, validate_amount, validate_currency
from finmesh.platform.rpc_errors import to_status

_log = get_logger("finmesh.payments")

# Namespace for payment ids derived from idempotency keys: a retried call
# asks risk about the same payment id, so risk counts it once.
_PAYMENT_NAMESPACE = uuid.UUID("8f0e6c1e-6a35-4a4e-9d3b-6f1f2b9c1a10")

_OPENABLE_KINDS = {
    pb.ACCOUNT_KIND_CUSTOMER_WALLET: AccountKind.CUSTOMER_WALLET,
    pb.ACCOUNT_KIND_MERCHANT: AccountKind.MERCHANT,
    pb.ACCOUNT_KIND_PLATFORM_FEE: AccountKind.PLATFORM_FEE,
    pb.ACCOUNT_KIND_RISK_RESERVE: AccountKind.RISK_RESERVE,
}
_CAPTURE_MODES = {
    pb.CAPTURE_MODE_UNSPECIFIED: CaptureMode.AUTOMATIC,
    pb.CAPTURE_MODE_AUTOMATIC: CaptureMode.AUTOMATIC,
    pb.CAPTURE_MODE_MANUAL: CaptureMode.MANUAL,
}
MAX_ID = 64
MAX_PAGE = 500


class PaymentsServicer(pb_grpc.PaymentsServiceServicer):
    def __init__(self, engine: AsyncEngine, risk: RiskClient, settings: PaymentsSettings,
                 on_commit: Any = None) -> None:
        self._engine = engine
        self._risk = risk
        self._settings = settings
        self._idem = IdempotencyStore(engine, idempotency, to_status)
        # Called after a commit that wrote outbox events (wakes the relay).
        self._on_commit = on_commit or (lambda: None)

    # -- accounts -----------------------------------------------------------

    async def OpenAccount(self, request: pb.OpenAccountRequest, context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        v.require(request.kind in _OPENABLE_KINDS, "kind",
                  "one of CUSTOMER_WALLET, MERCHANT, PLATFORM_FEE, RISK_RESERVE (clearing accounts open by themselves)")
        v.violations.extend(validate_currency(request.currency_code))
        v.require(len(request.owner_id) <= MAX_ID, "owner_id", f"at most {MAX_ID} characters")
        platform_kinds = (pb.ACCOUNT_KIND_PLATFORM_FEE, pb.ACCOUNT_KIND_RISK_RESERVE)
        v.require(bool(request.owner_id) or request.kind in platform_kinds,
                  "owner_id", "required for customer and merchant accounts")
        v.raise_if_any()

        async def open_it(conn: Any) -> pb.OpenAccountResponse:
            row = await ledger.open_account(conn, owner_id=request.owner_id, kind=_OPENABLE_KINDS[request.kind],
                                            currency=request.currency_code)
            return pb.OpenAccountResponse(account=convert.account(row))

        return await self._idem.run("OpenAccount", request, pb.OpenAccountResponse, open_it)

    async def GetAccount(self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext) -> Any:
        _require_id(request.account_id, "account_id")
        async with self._engine.connect() as conn:
            row = await ledger.require_account(conn, request.account_id)
        return pb.GetAccountResponse(account=convert.account(row))

    async def ListAccounts(self, request: pb.ListAccountsRequest, context: grpc.aio.ServicerContext) -> Any:
        _require_id(request.owner_id, "owner_id")
        size = _page_size(request.page_size)
        query = select(accounts).where(accounts.c.owner_id == request.owner_id)
        if request.page_token:
            query = query.where(accounts.c.account_id > request.page_token)
        query = query.order_by(accounts.c.account_id).limit(size + 1)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListAccountsResponse(
            accounts=[convert.account(r) for r in rows],
            next_page_token=rows[-1].account_id if more else "",
        )

    async def FreezeAccount(self, request: pb.FreezeAccountRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._set_frozen("FreezeAccount", request, True, pb.FreezeAccountResponse)

    async def UnfreezeAccount(self, request: pb.UnfreezeAccountRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._set_frozen("UnfreezeAccount", request, False, pb.UnfreezeAccountResponse)

    async def _set_frozen(self, method: str, request: Any, frozen: bool, response_type: Any) -> Any:
        _require_id(request.account_id, "account_id")

        async def change(conn: Any) -> Any:
            row = await operations.set_frozen(conn, request.account_id, frozen, request.reason[:100])
            return response_type(account=convert.account(row))

        reply = await self._idem.run(method, request, response_type, change)
        self._on_commit()
        return reply

    # -- money in ------------------------------------------------------------

    async def TopUp(self, request: pb.TopUpRequest, context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        v.require(_valid_id(request.account_id), "account_id", f"required, at most {MAX_ID} characters")
        v.require(_valid_id(request.channel) and request.channel.isidentifier(), "channel",
                  "required: a channel name such as test_bank")
        if not request.HasField("amount"):
            v.violations.append(FieldViolation("amount", "required"))
        else:
            v.violations.extend(validate_amount(request.amount.currency_code, request.amount.minor_units))
        v.raise_if_any()
        amount = Money(request.amount.currency_code, request.amount.minor_units)

        async def credit(conn: Any) -> pb.TopUpResponse:
            operation, account = await operations.top_up(conn, request.account_id, amount, request.channel)
            return pb.TopUpResponse(operation=convert.channel_operation(operation), account=convert.account(account))

        reply = await self._idem.run("TopUp", request, pb.TopUpResponse, credit)
        self._on_commit()
        return reply

    # -- payments --------------------------------------------------------------

    async def CreatePayment(self, request: pb.CreatePaymentRequest, context: grpc.aio.ServicerContext) -> Any:
        validate_payment_request(request.payer_account_id, request.payee_account_id, request.amount.currency_code,
                                 request.amount.minor_units, request.description, request.HasField("amount"))
        if request.capture_mode not in _CAPTURE_MODES:
            raise InvalidArgument(FieldViolation("capture_mode", "unknown capture mode"))
        payment = PaymentRequest(
            payer_account_id=request.payer_account_id,
            payee_account_id=request.payee_account_id,
            amount=parse_amount(request.amount.currency_code, request.amount.minor_units),
            capture_mode=_CAPTURE_MODES[request.capture_mode],
            description=request.description,
        )
        prior = await self._idem.replay("CreatePayment", request, pb.CreatePaymentResponse)
        if prior is not None:
            return prior
        payment_id = str(uuid.uuid5(_PAYMENT_NAMESPACE, request.idempotency_key))
        verdict = await self._assess(payment_id, payment, request.risk_context, context)

        async def record(conn: Any) -> pb.CreatePaymentResponse:
            row = await operations.create_payment(conn, payment_id, payment, verdict)
            return pb.CreatePaymentResponse(payment=convert.payment(row))

        reply = await self._idem.commit("CreatePayment", request, pb.CreatePaymentResponse, record)
        self._on_commit()
        _log.info("payment_created", payment_id=payment_id, status=pb.PaymentStatus.Name(reply.payment.status),
                  risk_decision=verdict.decision.value)
        return reply

    async def _assess(self, payment_id: str, payment: PaymentRequest, risk_context: pb.RiskContext,
                      context: grpc.aio.ServicerContext) -> RiskVerdict:
        async with self._engine.connect() as conn:
            payer = await ledger.get_account(conn, payment.payer_account_id)
            payee = await ledger.get_account(conn, payment.payee_account_id)
        # Refuse what cannot succeed before spending risk's capacity (and velocity budget) on it.
        for row, account_id in ((payer, payment.payer_account_id), (payee, payment.payee_account_id)):
            if row is None:
                raise FailedPrecondition("ACCOUNT_NOT_FOUND", "account not found", account_id=account_id)
            if row.currency != payment.amount.currency:
                raise FailedPrecondition("CURRENCY_MISMATCH", f"account is in {row.currency}",
                                         account_id=account_id)
        facts = PaymentFacts(
            payment_id=payment_id,
            payer_user_id=payer.owner_id,
            payer_account_id=payment.payer_account_id,
            payee_account_id=payment.payee_account_id,
            amount=payment.amount,
            device_id=risk_context.device_id[:MAX_ID],
            ip_address=risk_context.ip_address[:MAX_ID],
            ip_country=risk_context.ip_country[:2],
        )
        try:
            return await self._risk.assess(facts, remaining_timeout(context, self._settings.call_timeout_seconds))
        except grpc.aio.AioRpcError as error:
            _log.warning("risk_unavailable", code=error.code().name, policy=self._settings.risk_unavailable_policy)
            if self._settings.risk_unavailable_policy == "decline":
                raise Unavailable("RISK_UNAVAILABLE", "risk control did not answer; retry with the same key") from None
            return RiskVerdict("", 0, RiskDecision.REVIEW, ("RISK_UNAVAILABLE",))

    async def CapturePayment(self, request: pb.CapturePaymentRequest, context: grpc.aio.ServicerContext) -> Any:
        _require_id(request.payment_id, "payment_id")
        minor_units = None
        if request.HasField("amount"):
            problems = validate_amount(request.amount.currency_code, request.amount.minor_units)
            if problems:
                raise InvalidArgument(problems)
            minor_units = request.amount.minor_units

        async def capture(conn: Any) -> pb.CapturePaymentResponse:
            row = await operations.capture_payment(conn, request.payment_id, minor_units)
            return pb.CapturePaymentResponse(payment=convert.payment(row))

        reply = await self._idem.run("CapturePayment", request, pb.CapturePaymentResponse, capture)
        self._on_commit()
        return reply

    async def VoidPayment(self, request: pb.VoidPaymentRequest, context: grpc.aio.ServicerContext) -> Any:
        _require_id(request.payment_id, "payment_id")

        async def void(conn: Any) -> pb.VoidPaymentResponse:
            row = await operations.void_payment(conn, request.payment_id)
            return pb.VoidPaymentResponse(payment=convert.payment(row))

        reply = await self._idem.run("VoidPayment", request, pb.VoidPaymentResponse, void)
        self._on_commit()
        return reply

    async def GetPayment(self, request: pb.GetPaymentRequest, context: grpc.aio.ServicerContext) -> Any:
        _require_id(request.payment_id, "payment_id")
        async with self._engine.connect() as conn:
            row = await payment_rows.require_payment(conn, request.payment_id)
        return pb.GetPaymentResponse(payment=convert.payment(row))


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID and value.isprintable()


def _require_id(value: str, field: str) -> None:
    if not _valid_id(value):
        raise InvalidArgument(FieldViolation(field, f"required, at most {MAX_ID} printable characters"))


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
    return min(requested or 50, MAX_PAGE)
