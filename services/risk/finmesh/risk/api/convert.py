"""Rows and domain values to protobuf messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2

from finmesh.common.v1 import errors_pb2, money_pb2
from finmesh.platform.errors import DomainError, InvalidArgument
from finmesh.platform.rpc.guard import to_status, unexpected_status
from finmesh.platform.storage.db import aware
from finmesh.risk.domain.indicators import IndicatorBucket
from finmesh.risk.domain.onboarding import OnboardingVerdict
from finmesh.risk.domain.values import Reason
from finmesh.risk.v1 import risk_service_pb2 as pb


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(aware(moment))
    return ts


def reasons(stored: list[dict[str, Any]]) -> list[pb.Reason]:
    return [pb.Reason(code=r["code"], score=r["score"], detail=r["detail"]) for r in stored]


def domain_reasons(values: tuple[Reason, ...]) -> list[pb.Reason]:
    return [pb.Reason(code=r.code, score=r.score, detail=r.detail) for r in values]


def onboarding_reply(verdict: OnboardingVerdict) -> pb.AssessOnboardingResponse:
    return pb.AssessOnboardingResponse(
        tier=pb.RiskTier.Value(f"RISK_TIER_{verdict.tier.value}"),
        score=verdict.score,
        reasons=domain_reasons(verdict.reasons),
    )


def indicator_bucket(bucket: IndicatorBucket) -> pb.IndicatorBucket:
    return pb.IndicatorBucket(
        start=timestamp(bucket.start),
        assessments=bucket.assessments,
        declines=bucket.declines,
        reviews=bucket.reviews,
        alerts=bucket.alerts,
        decline_rate_bp=bucket.decline_rate_bp,
        review_rate_bp=bucket.review_rate_bp,
    )


def assessment(row: Any) -> pb.Assessment:
    return pb.Assessment(
        assessment_id=row.assessment_id,
        payment_id=row.payment_id,
        score=row.score,
        decision=pb.Decision.Value(f"DECISION_{row.decision}"),
        warning_level=pb.WarningLevel.Value(f"WARNING_LEVEL_{row.warning_level}"),
        reasons=reasons(row.reasons),
        rules_version=row.rules_version,
        assessed_at=timestamp(row.created_at),
    )


def block_entry(row: Any) -> pb.BlockListEntry:
    entry = pb.BlockListEntry(
        entry_id=row.entry_id,
        kind=pb.BlockListKind.Value(f"BLOCK_LIST_KIND_{row.kind}"),
        value=row.value,
        reason=row.reason,
        created_at=timestamp(row.created_at),
    )
    if row.expires_at is not None:
        entry.expires_at.CopyFrom(timestamp(row.expires_at))
    return entry


def aml_report(row: Any) -> pb.AmlReport:
    return pb.AmlReport(
        report_id=row.report_id,
        kind=pb.AmlReportKind.Value(f"AML_REPORT_KIND_{row.kind}"),
        user_id=row.user_id,
        payment_ids=list(row.payment_ids),
        total=money_pb2.Money(currency_code=row.currency, minor_units=int(row.total)),
        created_at=timestamp(row.created_at),
    )


def alert(row: Any) -> pb.Alert:
    return pb.Alert(
        alert_id=row.alert_id,
        level=pb.WarningLevel.Value(f"WARNING_LEVEL_{row.level}"),
        user_id=row.user_id,
        account_id=row.account_id,
        payment_id=row.payment_id,
        reasons=reasons(row.reasons),
        emergency_response_done=bool(row.emergency_response_done),
        created_at=timestamp(row.created_at),
    )


def refusal(error: DomainError, field_prefix: str) -> pb.CheckRefusal:
    """A check's refusal: the status AssessPayment would have answered, fields named from the batch request."""
    violations = error.violations if isinstance(error, InvalidArgument) else []
    return pb.CheckRefusal(
        code=to_status(error).code,
        reason=error.reason,
        message=error.message,
        field_violations=[
            errors_pb2.FieldViolation(field=field_prefix + v.field, description=v.description) for v in violations
        ],
    )


def unexpected_refusal(error: Exception) -> pb.CheckRefusal:
    """A check a bug failed: the status AssessPayment would have answered for it, nothing of the error's text."""
    status = unexpected_status(error)
    info = error_details_pb2.ErrorInfo()
    reason = next((info.reason for detail in status.details if detail.Unpack(info)), "")
    return pb.CheckRefusal(code=status.code, reason=reason, message=status.message)
