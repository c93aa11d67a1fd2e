"""Reconciling a bank's statement with the ledger: match its bookings with the succeeded top-ups and payouts of
its payment channel, save the report, and mark the matched operations reconciled.

Not a ledger change: it runs in a transaction of its own, with the answer stored under the caller's key in
the same transaction (finmesh.platform.storage.idempotency.IdempotencyStore), outside the ledger writer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.payments.domain import reconciliation as matching
from finmesh.payments.store import queries
from finmesh.platform.storage.idempotency import IdempotencyStore

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Report:
    report_id: str
    lines: list[matching.Line]
    matched: int


async def reconcile_statement(
    idempotency: IdempotencyStore,
    request: Any,
    response_type: type[M],
    channel: str,
    statement: list[matching.Booking],
    render: Callable[[Report], M],
) -> M:
    """The report on `statement` (the bank's bookings for `channel`), rendered, under `request`'s key: a retry
    gets the stored answer, not a second report."""

    async def reconcile(conn: AsyncConnection) -> M:
        return render(await _reconcile(conn, channel, statement, datetime.now(UTC)))

    return await idempotency.run("ReconcileStatement", request, response_type, reconcile)


async def _reconcile(conn: AsyncConnection, channel: str, statement: list[matching.Booking], now: datetime) -> Report:
    ledger = await queries.ledger_bookings(
        conn, channel, [b.channel_reference for b in statement], matching.statement_end(statement)
    )
    lines = matching.match(statement, ledger)
    report_id = await queries.save_report(conn, channel, lines, now)
    return Report(report_id, lines, sum(1 for line in lines if line.outcome is matching.Outcome.MATCHED))
