"""Back-office RPCs: settlement, reconciliation of channel statements, audit-log verification."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import grpc

from finmesh.payments.api import convert
from finmesh.payments.api.common import (
    ServicerBase,
    decode_time_token,
    encode_token,
    key_derived_id,
    page_size,
    require_id,
    valid_id,
)
from finmesh.payments.domain import reconciliation
from finmesh.payments.store import queries
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import settlement
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.storage.idempotency import validate_key

_BATCH_NAMESPACE = uuid.UUID("0c9d3f4e-5b7a-4e21-9a6b-2d8c1e0f7a35")
# google.protobuf.Timestamp's valid range, 0001-01-01..9999-12-31: outside it ToDatetime raises.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _cutoff(ts: Any) -> datetime:
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument(FieldViolation("cutoff", "outside 0001-01-01..9999-12-31"))
    return ts.ToDatetime(tzinfo=UTC)


class BackOfficeRpcs(ServicerBase):
    async def RunSettlement(self, request: pb.RunSettlementRequest, context: grpc.aio.ServicerContext) -> Any:
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

        return await self.submit("RunSettlement", request, pb.RunSettlementResponse, action,
                                 lambda batch: pb.RunSettlementResponse(batch=convert.settlement_batch(batch)),
                                 exclusive=True)

    async def ListSettlementBatches(self, request: pb.ListSettlementBatchesRequest,
                                    context: grpc.aio.ServicerContext) -> Any:
        require_id(request.merchant_account_id, "merchant_account_id")
        size = page_size(request.page_size)
        after = decode_time_token(request.page_token)
        async with self.deps.reader.connect() as conn:
            found = await queries.settlements_of(conn, request.merchant_account_id, after, size + 1)
        more = len(found) > size
        found = found[:size]
        token = encode_token(found[-1].created_at.isoformat(), found[-1].batch_id) if more else ""
        return pb.ListSettlementBatchesResponse(batches=[convert.settlement_row(r) for r in found],
                                                next_page_token=token)

    async def ReconcileStatement(self, request: pb.ReconcileStatementRequest,
                                 context: grpc.aio.ServicerContext) -> Any:
        validate_key(request.idempotency_key)
        v = Validator()
        v.require(valid_id(request.channel) and request.channel.isidentifier(), "channel", "required: a channel name")
        v.require(bool(request.statement_csv), "statement_csv", "required")
        v.raise_if_any()
        statement = reconciliation.parse_statement(request.statement_csv)

        async def reconcile(conn: Any) -> pb.ReconcileStatementResponse:
            ledger = await queries.ledger_bookings(conn, request.channel,
                                                   [b.channel_reference for b in statement],
                                                   reconciliation.statement_end(statement))
            lines = reconciliation.match(statement, ledger)
            report_id = await queries.save_report(conn, request.channel, lines, datetime.now(UTC))
            matched = sum(1 for line in lines if line.outcome is reconciliation.Outcome.MATCHED)
            return pb.ReconcileStatementResponse(report_id=report_id,
                                                 lines=[convert.reconciliation_line(line) for line in lines],
                                                 matched_count=matched, mismatch_count=len(lines) - matched)

        return await self.deps.idempotency.run("ReconcileStatement", request, pb.ReconcileStatementResponse,
                                               reconcile)

    async def VerifyAuditLog(self, request: pb.VerifyAuditLogRequest, context: grpc.aio.ServicerContext) -> Any:
        async with self.deps.reader.connect() as conn:
            result = await queries.verify_audit(conn)
        return pb.VerifyAuditLogResponse(intact=result.intact, rows_checked=result.rows_checked,
                                         first_broken_sequence=result.first_broken_sequence)
