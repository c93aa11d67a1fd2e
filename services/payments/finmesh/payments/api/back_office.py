"""Back-office RPCs: settlement, reconciliation of bank statements, audit-log verification."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from finmesh.payments.api import convert
from finmesh.payments.api.common import (
    Context,
    ServicerBase,
    decode_time_token,
    encode_token,
    key_derived_id,
    page_size,
    require_id,
    valid_id,
)
from finmesh.payments.domain import reconciliation
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import settlement
from finmesh.payments.usecases.reconciliation import Report, reconcile_statement
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.storage.idempotency import validate_key

_BATCH_NAMESPACE = uuid.UUID("0c9d3f4e-5b7a-4e21-9a6b-2d8c1e0f7a35")
# google.protobuf.Timestamp's valid range, 0001-01-01..9999-12-31: outside it ToDatetime raises.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _cutoff(ts: Timestamp) -> datetime:
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument(FieldViolation("cutoff", "outside 0001-01-01..9999-12-31"))
    return ts.ToDatetime(tzinfo=UTC)


class BackOfficeRpcs(ServicerBase):
    async def RunSettlement(self, request: pb.RunSettlementRequest, context: Context) -> Any:
        validate_key(request.idempotency_key)
        require_id(request.merchant_account_id, "merchant_account_id")
        now = datetime.now(UTC)
        cutoff = _cutoff(request.cutoff) if request.HasField("cutoff") else now
        if cutoff > now:
            raise InvalidArgument(FieldViolation("cutoff", "must not be in the future"))
        batch_id = key_derived_id(_BATCH_NAMESPACE, "RunSettlement", request)
        schedule = self.deps.settings.fee_schedule()

        async def action(uow: UnitOfWork) -> Any:
            return await settlement.run(uow, batch_id, request.merchant_account_id, cutoff, schedule)

        return await self.submit(
            "RunSettlement",
            request,
            pb.RunSettlementResponse,
            action,
            lambda batch: pb.RunSettlementResponse(batch=convert.settlement_batch(batch)),
            exclusive=True,
        )

    async def ListSettlementBatches(self, request: pb.ListSettlementBatchesRequest, context: Context) -> Any:
        require_id(request.merchant_account_id, "merchant_account_id")
        size = page_size(request.page_size)
        after = decode_time_token(request.page_token)
        found = await self.deps.reads.settlements_of(request.merchant_account_id, after, size + 1)
        more = len(found) > size
        found = found[:size]
        token = encode_token(found[-1].created_at.isoformat(), found[-1].batch_id) if more else ""
        return pb.ListSettlementBatchesResponse(
            batches=[convert.settlement_row(r) for r in found], next_page_token=token
        )

    async def ReconcileStatement(self, request: pb.ReconcileStatementRequest, context: Context) -> Any:
        validate_key(request.idempotency_key)
        v = Validator()
        v.require(valid_id(request.channel) and request.channel.isidentifier(), "channel", "required: a channel name")
        v.require(bool(request.statement_csv), "statement_csv", "required")
        v.raise_if_any()
        statement = reconciliation.parse_statement(request.statement_csv)

        def render(report: Report) -> pb.ReconcileStatementResponse:
            return pb.ReconcileStatementResponse(
                report_id=report.report_id,
                lines=[convert.reconciliation_line(line) for line in report.lines],
                matched_count=report.matched,
                mismatch_count=len(report.lines) - report.matched,
            )

        return await reconcile_statement(
            self.deps.idempotency, request, pb.ReconcileStatementResponse, request.channel, statement, render
        )

    async def VerifyAuditLog(self, request: pb.VerifyAuditLogRequest, context: Context) -> Any:
        result = await self.deps.reads.verify_audit()
        return pb.VerifyAuditLogResponse(
            intact=result.intact, rows_checked=result.rows_checked, first_broken_sequence=result.first_broken_sequence
        )
