"""Background clean-up: channel operations nobody came back for, and authorizations nobody captured.

A PENDING operation older than the grace period is looked up at its channel
(never re-sent: the lookup only asks what happened) and finished through the
writer under the caller's own idempotency key, so a late retry gets the same
answer. An operation the channel never received failed. Finishing always
leaves a final state (SUCCEEDED, FAILED, or PARKED when the ledger refuses
what the channel did), so each operation is swept once. If the caller's key
already holds an answer (a refusal recorded before operations could be
parked), the operation is finished under the sweeper's own key for it: the
caller keeps the answer it was given, the operation still converges.

An authorization older than its time to live is voided (the hold is
released), so held funds are posted, voided or expire, exactly once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments.api import convert
from finmesh.payments.api.money_movement import operation_reply
from finmesh.payments.clients.banks import BankAnswer, Banks, BankUnavailable
from finmesh.payments.store import rows
from finmesh.payments.store.schema import channel_operations, payments
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import payments as payments_usecase
from finmesh.payments.usecases import top_ups_and_payouts as usecase
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.writer import Command, LedgerWriter
from finmesh.platform.errors import DomainError
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import is_transient
from finmesh.platform.storage.idempotency import ANONYMOUS, StoredRefusal, request_fingerprint

_log = get_logger("finmesh.payments.sweeper")
_METHODS = {usecase.TOP_UP: ("TopUp", pb.TopUpResponse), usecase.PAYOUT: ("Payout", pb.PayoutResponse)}
# The idempotency method under which the sweeper finishes an operation whose caller's key is taken.
_OWN_METHOD = "SweepChannelOperation"


class PendingOperationSweeper:
    def __init__(self, engine: AsyncEngine, writer: LedgerWriter, banks: Banks, *,
                 grace_seconds: float, interval_seconds: float,
                 authorization_ttl_seconds: float = 7 * 24 * 3600) -> None:
        self._authorization_ttl = timedelta(seconds=authorization_ttl_seconds)
        self._engine = engine
        self._writer = writer
        self._banks = banks
        self._grace = timedelta(seconds=grace_seconds)
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="payments-channel-sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep_once()
                await self.expire_authorizations()
            except Exception:  # noqa: BLE001 - the sweeper must outlive a database or channel hiccup
                _log.exception("sweep_failed")

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Finish every overdue PENDING operation the channel can tell us about; return how many."""
        c = channel_operations.c
        cutoff = (now or datetime.now(UTC)) - self._grace
        async with self._engine.connect() as conn:
            overdue = [rows.bank_operation(r) for r in await conn.execute(
                select(channel_operations).where(c.status == "PENDING", c.created_at <= cutoff)
                .order_by(c.created_at).limit(200))]
            await conn.rollback()
        finished = 0
        for op in overdue:
            try:
                finished += await self._finish(op)
            except Exception as error:  # noqa: BLE001 - one operation's failure must not starve the ones after it
                if not is_transient(error):
                    _log.exception("channel_operation_sweep_failed", operation_id=op.operation_id)
        return finished

    async def expire_authorizations(self, now: datetime | None = None) -> int:
        """Void every authorization older than its time to live; return how many were voided."""
        p = payments.c
        cutoff = (now or datetime.now(UTC)) - self._authorization_ttl
        async with self._engine.connect() as conn:
            stale = [r.payment_id for r in await conn.execute(
                select(p.payment_id).where(p.status == "AUTHORIZED", p.created_at <= cutoff)
                .order_by(p.created_at).limit(500))]
            await conn.rollback()
        expired = 0
        for payment_id in stale:
            request = pb.VoidPaymentRequest(idempotency_key=f"expire:{payment_id}", payment_id=payment_id)

            async def action(uow: UnitOfWork, payment_id: str = payment_id) -> Any:
                return await payments_usecase.expire_authorization(uow, payment_id)

            reply = await self._writer.submit(Command(
                # The service's own job: no caller, the anonymous scope.
                method="ExpireAuthorization", scope=ANONYMOUS, key=request.idempotency_key,
                fingerprint=request_fingerprint(request),
                response_type=pb.VoidPaymentResponse, action=action,
                render=lambda state: pb.VoidPaymentResponse(payment=convert.payment(state))))
            expired += reply.payment.status == pb.PAYMENT_STATUS_VOIDED
        if expired:
            _log.info("authorizations_expired", count=expired)
        return expired

    async def _finish(self, op: rows.BankOperation) -> int:
        """Finish one operation: 1 if this pass brought it to its final state, else 0 (tried again later)."""
        bank = self._banks.get(op.channel)
        if bank is None:
            return 0
        try:
            answer = await bank.lookup(op.operation_id)
        except BankUnavailable:
            return 0
        if answer is None:
            answer = BankAnswer("FAILED", failure_reason="NOT_RECEIVED_BY_CHANNEL")
        method, response_type = _METHODS[op.kind]
        finished: list[rows.BankOperation] = []  # what this pass finished (not another caller meanwhile)

        async def finish(uow: UnitOfWork) -> Any:
            current = await uow.bank_operation(op.operation_id)
            result = await usecase.finish(uow, op.operation_id, answer)
            finished[:] = [result[0]] if current is not None and current.status == "PENDING" else []
            return result

        def command(method: str, scope: str, key: str) -> Command:
            return Command(method=method, scope=scope, key=key, fingerprint=op.request_hash or b"",
                           response_type=response_type, action=finish, render=operation_reply(response_type))

        try:
            try:
                # Under the key of the caller who began it, so that caller's retry finds the answer.
                await self._writer.submit(command(method, op.idempotency_scope, op.idempotency_key))
            except (StoredRefusal, DomainError):
                # The caller's key holds another answer (a refusal from before parking existed): the writer
                # replayed it and finished nothing. Finish under the sweeper's own key for this operation.
                await self._writer.submit(command(_OWN_METHOD, ANONYMOUS, op.operation_id))
        except (StoredRefusal, DomainError) as error:
            _log.error("channel_operation_sweep_refused", operation_id=op.operation_id, error=type(error).__name__)
            return 0
        if not finished:
            return 0  # finished meanwhile (a caller's retry), or answered from a stored reply
        _log.info("channel_operation_swept", operation_id=op.operation_id, status=finished[0].status)
        return 1
