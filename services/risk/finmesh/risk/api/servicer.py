"""RiskService servicer: assessment of payments (idempotent on payment id)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.errors import FieldViolation, Validator
from finmesh.platform.logs import get_logger
from finmesh.platform.money import validate_amount
from finmesh.risk.domain.scoring import Features, Rules, assess
from finmesh.risk.store import assessments
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc

_log = get_logger("finmesh.risk")
MAX_ID = 64


class RiskServicer(pb_grpc.RiskServiceServicer):
    def __init__(self, engine: AsyncEngine, rules: Rules | None = None) -> None:
        self._engine = engine
        self._rules = rules or Rules()

    async def AssessPayment(self, request: pb.AssessPaymentRequest, context: grpc.aio.ServicerContext) -> Any:
        _validate(request)
        async with self._engine.connect() as conn:
            prior = await assessments.find_by_payment(conn, request.payment_id)
        if prior is not None:
            return pb.AssessPaymentResponse(assessment=_to_proto(prior))
        rules = self._rules
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                recent = await assessments.count_since(
                    conn, request.payer_user_id, now - timedelta(seconds=rules.velocity_window_seconds)
                )
                verdict = assess(
                    Features(request.amount.minor_units, request.amount.currency_code, recent_count=recent), rules
                )
                row = await assessments.insert_assessment(
                    conn,
                    assessment_id=str(uuid.uuid4()),
                    payment_id=request.payment_id,
                    user_id=request.payer_user_id,
                    account_id=request.payer_account_id,
                    currency=request.amount.currency_code,
                    amount=request.amount.minor_units,
                    device_id=request.device_id,
                    ip_address=request.ip_address,
                    score=verdict.score,
                    decision=verdict.decision.value,
                    warning_level=verdict.warning_level.value,
                    reasons=[{"code": r.code, "score": r.score, "detail": r.detail} for r in verdict.reasons],
                    rules_version=rules.version,
                    synthetic=int(request.synthetic),
                    created_at=now,
                )
        except IntegrityError:
            # The same payment was assessed concurrently (a retry); its verdict stands.
            async with self._engine.connect() as conn:
                row = await assessments.find_by_payment(conn, request.payment_id)
        _log.info("payment_assessed", payment_id=row.payment_id, decision=row.decision, score=row.score,
                  rules_version=row.rules_version)
        return pb.AssessPaymentResponse(assessment=_to_proto(row))


def _validate(request: pb.AssessPaymentRequest) -> None:
    v = Validator()
    v.require(0 < len(request.payment_id) <= MAX_ID, "payment_id", f"required, at most {MAX_ID} characters")
    v.require(len(request.payer_user_id) <= MAX_ID, "payer_user_id", f"at most {MAX_ID} characters")
    v.require(0 < len(request.payer_account_id) <= MAX_ID, "payer_account_id", "required")
    v.require(len(request.device_id) <= MAX_ID, "device_id", f"at most {MAX_ID} characters")
    v.require(len(request.ip_address) <= MAX_ID, "ip_address", f"at most {MAX_ID} characters")
    if not request.HasField("amount"):
        v.violations.append(FieldViolation("amount", "required"))
    else:
        v.violations.extend(validate_amount(request.amount.currency_code, request.amount.minor_units))
    v.raise_if_any()


def _to_proto(row: Any) -> pb.Assessment:
    assessed_at = timestamp_pb2.Timestamp()
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    assessed_at.FromDatetime(created)
    return pb.Assessment(
        assessment_id=row.assessment_id,
        payment_id=row.payment_id,
        score=row.score,
        decision=pb.Decision.Value(f"DECISION_{row.decision}"),
        warning_level=pb.WarningLevel.Value(f"WARNING_LEVEL_{row.warning_level}"),
        reasons=[pb.Reason(code=r["code"], score=r["score"], detail=r["detail"]) for r in row.reasons],
        rules_version=row.rules_version,
        assessed_at=assessed_at,
    )
