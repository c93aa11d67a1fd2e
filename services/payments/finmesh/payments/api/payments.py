"""Payment RPCs: create (risk first), capture, void, review, refund, read, list."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import grpc

from finmesh.payments.api import convert
from finmesh.payments.api.common import (
    MAX_ID,
    Context,
    ServicerBase,
    amount_violations,
    decode_time_token,
    encode_token,
    key_derived_id,
    page_size,
    require_id,
)
from finmesh.payments.api.risk_context import RiskFacts, validate_risk_context
from finmesh.payments.clients.risk import PaymentFacts, RiskVerdict
from finmesh.payments.domain.ledger import AccountState
from finmesh.payments.domain.limits import limit_day
from finmesh.payments.domain.payments import PaymentRequest, RiskDecision, validate_payment_request
from finmesh.payments.domain.synthetic import between_test_accounts
from finmesh.payments.store import rows
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import payments as usecase
from finmesh.payments.usecases.ownership import require_account_owner, require_payee_owner, require_payment_party
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.errors import DomainError, FieldViolation, InvalidArgument, NotFound, Unavailable, Validator
from finmesh.platform.money import Money
from finmesh.platform.observability import synthetic
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.rpc.channels import remaining_timeout
from finmesh.platform.storage.idempotency import caller_scope, replay_stored, request_fingerprint, validate_key

_log = get_logger("finmesh.payments")

# Namespace for payment ids derived from idempotency keys: a retried call
# asks risk about the same payment id, so risk counts it once.
_PAYMENT_NAMESPACE = uuid.UUID("8f0e6c1e-6a35-4a4e-9d3b-6f1f2b9c1a10")
# Only these mean risk is down or slow (the unavailable policy applies); any other refusal is a fault.
_RISK_DOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _payment_reply(response_type: Any) -> Any:
    return lambda state: response_type(payment=convert.payment(state))


class PaymentRpcs(ServicerBase):
    async def CreatePayment(self, request: pb.CreatePaymentRequest, context: Context) -> Any:
        validate_payment_request(
            request.payer_account_id,
            request.payee_account_id,
            request.amount.currency_code,
            request.amount.minor_units,
            request.description,
            request.HasField("amount"),
        )
        if request.capture_mode not in convert.CAPTURE_MODES:
            raise InvalidArgument(FieldViolation("capture_mode", "unknown capture mode"))
        risk_context = validate_risk_context(request.risk_context)
        payment = PaymentRequest(
            payer_account_id=request.payer_account_id,
            payee_account_id=request.payee_account_id,
            amount=Money(request.amount.currency_code, request.amount.minor_units),
            capture_mode=convert.CAPTURE_MODES[request.capture_mode],
            description=request.description,
        )
        validate_key(request.idempotency_key)
        fingerprint = request_fingerprint(request)
        now = datetime.now(UTC)
        day = limit_day(now, self.deps.limits.utc_offset_minutes)
        found = await self.deps.prechecks.check(
            payment,
            "CreatePayment",
            caller_scope(request),
            request.idempotency_key,
            day,
            now,
            synthetic.requested(context),
        )
        if found.prior is not None:
            return replay_stored(found.prior, fingerprint, pb.CreatePaymentResponse)
        if found.refusal is not None:
            return await self._refuse("CreatePayment", request, pb.CreatePaymentResponse, found.refusal)
        assert found.checked is not None
        payer, payee, tier = found.checked.payer, found.checked.payee, found.checked.tier
        parties = (payment.payer_account_id, payment.payee_account_id)
        payment_id = key_derived_id(_PAYMENT_NAMESPACE, "CreatePayment", request)
        test_payment = between_test_accounts((payer.owner_id, payee.owner_id), self.deps.writer.test_owners)
        verdict = await self._assess(payment_id, payment, payer, tier, risk_context, context, test_payment)
        limits = self.deps.limits

        async def action(uow: UnitOfWork) -> Any:
            return await usecase.create_payment(uow, payment_id, payment, verdict, limits)

        reply = await self.submit(
            "CreatePayment",
            request,
            pb.CreatePaymentResponse,
            action,
            _payment_reply(pb.CreatePaymentResponse),
            accounts=parties,
            fingerprint=fingerprint,
        )
        _log.info(
            "payment_created",
            payment_id=payment_id,
            status=pb.PaymentStatus.Name(reply.payment.status),
            risk_decision=verdict.decision.value,
            **({"synthetic": True} if test_payment else {}),
        )
        return reply

    async def _refuse(self, method: str, request: Any, response_type: Any, error: DomainError) -> Any:
        """Store a refusal found before the writer, so a retry with this key is refused the same way.

        The writer checks the key first: if a concurrent call with the same
        key has committed meanwhile, its answer is returned instead.
        """
        if isinstance(error, InvalidArgument) or error.kind in ("unavailable", "permission_denied"):
            raise error

        async def refuse(uow: UnitOfWork) -> Any:
            raise error

        return await self.submit(method, request, response_type, refuse, _payment_reply(response_type))

    async def _assess(
        self,
        payment_id: str,
        payment: PaymentRequest,
        payer: AccountState,
        tier: str,
        risk_context: RiskFacts,
        context: Context,
        test_payment: bool,
    ) -> RiskVerdict:
        settings = self.deps.settings
        facts = PaymentFacts(
            payment_id=payment_id,
            payer_user_id=payer.owner_id,
            payer_account_id=payment.payer_account_id,
            payee_account_id=payment.payee_account_id,
            amount=payment.amount,
            device_id=risk_context.device_id,
            ip_address=risk_context.ip_address,
            ip_country=risk_context.ip_country,
            payer_tier=tier,
            # Probes and load tests pay between dedicated test accounts; risk keeps them out of velocity, AML
            # and indicators. Decided from configuration, never from the caller, so nobody opts out of risk.
            synthetic=test_payment,
        )
        try:
            return await self.deps.risk.assess(facts, remaining_timeout(context, settings.call_timeout_seconds))
        except grpc.aio.AioRpcError as error:
            if error.code() not in _RISK_DOWN:
                # Risk answered, but refused the call: a bug or a misconfiguration (credentials, keys, contract).
                # Never approve or hold funds on a risk check that did not happen: refuse, retryable once fixed.
                _log.error("risk_call_refused", code=error.code().name)
                raise Unavailable(
                    "RISK_UNAVAILABLE", "risk control refused the check; retry with the same key later"
                ) from None
            _log.warning("risk_unavailable", code=error.code().name, policy=settings.risk_unavailable_policy)
            if settings.risk_unavailable_policy == "decline":
                raise Unavailable("RISK_UNAVAILABLE", "risk control did not answer; retry with the same key") from None
            return RiskVerdict("", 0, RiskDecision.REVIEW, ("RISK_UNAVAILABLE",))

    async def CapturePayment(self, request: pb.CapturePaymentRequest, context: Context) -> Any:
        require_id(request.payment_id, "payment_id")
        problems = amount_violations(request, required=False)
        if problems:
            raise InvalidArgument(problems)
        await require_payee_owner(self.deps.reads, request.payment_id)
        await self.require_test_payment(context, request.payment_id)
        minor_units = request.amount.minor_units if request.HasField("amount") else None

        async def action(uow: UnitOfWork) -> Any:
            return await usecase.capture_payment(uow, request.payment_id, minor_units)

        return await self.submit(
            "CapturePayment", request, pb.CapturePaymentResponse, action, _payment_reply(pb.CapturePaymentResponse)
        )

    async def VoidPayment(self, request: pb.VoidPaymentRequest, context: Context) -> Any:
        require_id(request.payment_id, "payment_id")
        await require_payee_owner(self.deps.reads, request.payment_id)
        await self.require_test_payment(context, request.payment_id)

        async def action(uow: UnitOfWork) -> Any:
            return await usecase.void_payment(uow, request.payment_id)

        return await self.submit(
            "VoidPayment", request, pb.VoidPaymentResponse, action, _payment_reply(pb.VoidPaymentResponse)
        )

    async def ReviewPayment(self, request: pb.ReviewPaymentRequest, context: Context) -> Any:
        v = Validator()
        v.require(0 < len(request.payment_id) <= MAX_ID, "payment_id", "required")
        v.require(request.decision in convert.REVIEW_DECISIONS, "decision", "APPROVE or DECLINE")
        v.raise_if_any()
        await self.require_test_payment(context, request.payment_id)
        decision = convert.REVIEW_DECISIONS[request.decision]

        async def action(uow: UnitOfWork) -> Any:
            return await usecase.review_payment(uow, request.payment_id, decision, request.note)

        return await self.submit(
            "ReviewPayment", request, pb.ReviewPaymentResponse, action, _payment_reply(pb.ReviewPaymentResponse)
        )

    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: Context) -> Any:
        v = Validator()
        v.require(0 < len(request.payment_id) <= MAX_ID, "payment_id", "required")
        v.violations.extend(amount_violations(request, required=False))
        v.raise_if_any()
        await require_payee_owner(self.deps.reads, request.payment_id)
        await self.require_test_payment(context, request.payment_id)
        has_amount = request.HasField("amount")
        currency = request.amount.currency_code if has_amount else None
        minor_units = request.amount.minor_units if has_amount else None

        async def action(uow: UnitOfWork) -> Any:
            return await usecase.refund_payment(uow, request.payment_id, currency, minor_units, request.reason)

        def render(result: usecase.RefundResult) -> pb.RefundPaymentResponse:
            refund = pb.Refund(
                refund_id=result.refund_id,
                payment_id=result.payment.payment_id,
                amount=convert.money(result.payment.currency, result.amount),
                reason=result.reason,
                created_at=convert.timestamp(result.payment.updated_at),
            )
            return pb.RefundPaymentResponse(refund=refund, payment=convert.payment(result.payment))

        return await self.submit("RefundPayment", request, pb.RefundPaymentResponse, action, render)

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Context) -> Any:
        require_id(request.payment_id, "payment_id")
        row = await self.deps.reads.payment(request.payment_id)
        if row is None:
            raise NotFound("PAYMENT_NOT_FOUND", "payment not found", payment_id=request.payment_id)
        await require_payment_party(self.deps.reads, row.payer_account_id, row.payee_account_id)
        return pb.GetPaymentResponse(payment=convert.payment(rows.payment_state(row)))

    async def ListPayments(self, request: pb.ListPaymentsRequest, context: Context) -> Any:
        require_id(request.account_id, "account_id")
        await require_account_owner(self.deps.reads, request.account_id)
        size = page_size(request.page_size)
        after = decode_time_token(request.page_token)
        found = await self.deps.reads.payments_of(request.account_id, after, size + 1)
        more = len(found) > size
        found = found[:size]
        token = encode_token(found[-1].created_at.isoformat(), found[-1].payment_id) if more else ""
        return pb.ListPaymentsResponse(
            payments=[convert.payment(rows.payment_state(r)) for r in found], next_page_token=token
        )
