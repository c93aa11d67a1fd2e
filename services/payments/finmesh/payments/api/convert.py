"""Rows and domain values to protobuf messages (and back)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2

from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pb


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return ts


def money(currency: str, minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=minor_units)


def account(row: Any) -> pb.Account:
    return pb.Account(
        account_id=row.account_id,
        owner_id=row.owner_id,
        kind=pb.AccountKind.Value(f"ACCOUNT_KIND_{row.kind}"),
        currency_code=row.currency,
        status=pb.AccountStatus.Value(f"ACCOUNT_STATUS_{row.status}"),
        balance=pb.Balance(
            available_minor_units=row.available,
            held_minor_units=row.held,
            total_minor_units=row.available + row.held,
            currency_code=row.currency,
        ),
        channel=row.channel,
        created_at=timestamp(row.created_at),
    )


def payment(row: Any) -> pb.Payment:
    return pb.Payment(
        payment_id=row.payment_id,
        payer_account_id=row.payer_account_id,
        payee_account_id=row.payee_account_id,
        amount=money(row.currency, row.amount),
        captured=money(row.currency, row.captured),
        refunded=money(row.currency, row.refunded),
        status=pb.PaymentStatus.Value(f"PAYMENT_STATUS_{row.status}"),
        capture_mode=pb.CaptureMode.Value(f"CAPTURE_MODE_{row.capture_mode}"),
        description=row.description,
        risk=pb.RiskOutcome(
            assessment_id=row.risk_assessment_id,
            score=row.risk_score,
            decision=row.risk_decision,
            reasons=[r for r in row.risk_reasons.split(",") if r],
        ),
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
    )


def channel_operation(row: Any) -> pb.ChannelOperation:
    return pb.ChannelOperation(
        operation_id=row.operation_id,
        account_id=row.account_id,
        amount=money(row.currency, row.amount),
        channel=row.channel,
        status=pb.ChannelOperationStatus.Value(f"CHANNEL_OPERATION_STATUS_{row.status}"),
        channel_reference=row.channel_reference,
        created_at=timestamp(row.created_at),
    )
