"""Background clean-up: top-ups and payouts nobody came back for, and authorizations nobody captured.

A PENDING operation older than the grace period is looked up at its bank
(never re-sent: the lookup only asks what happened) and finished through the
writer under the caller's own idempotency key, so a late retry gets the same
answer. An operation the bank never received failed. Finishing always leaves
a final state (SUCCEEDED, FAILED, or PARKED when the ledger refuses what the
bank did), so each operation is swept once. If the caller's key already holds
an answer (a refusal recorded before operations could be parked), the
operation is finished under the sweeper's own key for it: the caller keeps
the answer it was given, the operation still converges.

An authorization older than its time to live is voided (the hold is
released), so held funds are posted, voided or expire, exactly once.

The answers it records are the RPCs' own (TopUp, Payout, VoidPayment), so
they are rendered by the api: `SweepAnswers`, given when the app is wired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments.clients.banks import BankAnswer, Banks, BankUnavailable
from finmesh.payments.store import queries, rows
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import payments as payments_usecase
from finmesh.payments.usecases import top_ups_and_payouts as usecase
from finmesh.payments.usecases.ledger_writer import Command, LedgerWriter
from finmesh.platform.errors import DomainError
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import is_transient
from finmesh.platform.storage.idempotency import ANONYMOUS, StoredRefusal

_log = get_logger("finmesh.payments.usecases.sweeper")
# The idempotency method under which the sweeper finishes an operation whose caller's key is taken. Stored
# with the answers: it keeps the contract's word for a top-up or payout.
_OWN_METHOD = "SweepChannelOperation"


@dataclass(frozen=True)
class Answer:
    """An RPC's answer as the sweeper records it: the method whose key it fills, the response type, and how
    the use case's result is rendered."""

    method: str
    response_type: type[Message]
    render: Callable[[Any], Message]


@dataclass(frozen=True)
class SweepAnswers:
    top_up: Answer  # the result rendered: (BankOperation, AccountState)
    payout: Answer
    expiry: Answer  # the result rendered: the PaymentState
    # The fingerprint of the VoidPayment request an expiry stands for, from (idempotency key, payment id).
    expiry_fingerprint: Callable[[str, str], bytes]
    # Whether a (possibly replayed) expiry answer says the payment was voided.
    voided: Callable[[Any], bool]


class PendingOperationSweeper:
    def __init__(
        self,
        engine: AsyncEngine,
        writer: LedgerWriter,
        banks: Banks,
        answers: SweepAnswers,
        *,
        grace_seconds: float,
        interval_seconds: float,
        authorization_ttl_seconds: float = 7 * 24 * 3600,
    ) -> None:
        self._authorization_ttl = timedelta(seconds=authorization_ttl_seconds)
        self._engine = engine
        self._writer = writer
        self._banks = banks
        self._answers = answers
        self._grace = timedelta(seconds=grace_seconds)
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="payments-sweeper")

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
            except Exception:  # noqa: BLE001 - the sweeper must outlive a database or bank hiccup
                _log.exception("sweep_failed")

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Finish every overdue PENDING operation its bank can tell us about; return how many."""
        cutoff = (now or datetime.now(UTC)) - self._grace
        async with self._engine.connect() as conn:
            overdue = await queries.overdue_operations(conn, cutoff, 200)
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
        cutoff = (now or datetime.now(UTC)) - self._authorization_ttl
        async with self._engine.connect() as conn:
            stale = await queries.stale_authorizations(conn, cutoff, 500)
            await conn.rollback()
        expired = 0
        answer = self._answers.expiry
        for payment_id in stale:
            key = f"expire:{payment_id}"

            async def action(uow: UnitOfWork, payment_id: str = payment_id) -> Any:
                return await payments_usecase.expire_authorization(uow, payment_id)

            reply = await self._writer.submit(
                Command(
                    # The service's own job: no caller, the anonymous scope.
                    method=answer.method,
                    scope=ANONYMOUS,
                    key=key,
                    fingerprint=self._answers.expiry_fingerprint(key, payment_id),
                    response_type=answer.response_type,
                    action=action,
                    render=answer.render,
                )
            )
            expired += self._answers.voided(reply)
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
        recorded = self._answers.top_up if op.kind == usecase.TOP_UP else self._answers.payout
        finished: list[rows.BankOperation] = []  # what this pass finished (not another caller meanwhile)

        async def finish(uow: UnitOfWork) -> Any:
            current = await uow.bank_operation(op.operation_id)
            result = await usecase.finish(uow, op.operation_id, answer)
            finished[:] = [result[0]] if current is not None and current.status == "PENDING" else []
            return result

        def command(method: str, scope: str | None, key: str) -> Command:
            return Command(
                method=method,
                scope=scope,
                key=key,
                fingerprint=op.request_hash or b"",
                response_type=recorded.response_type,
                action=finish,
                render=recorded.render,
            )

        try:
            try:
                # Under the key of the caller who began it, so that caller's retry finds the answer.
                await self._writer.submit(command(recorded.method, op.idempotency_scope, op.idempotency_key))
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
