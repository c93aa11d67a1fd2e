"""Read paths for the api (lists with keyset pagination), the sweeper's finds, and the reconciliation and audit
stores."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.payments.domain import audit
from finmesh.payments.domain.reconciliation import Booking, Line, Outcome
from finmesh.payments.store import rows
from finmesh.payments.store.schema import (
    accounts,
    audit_head,
    audit_log,
    channel_operations,
    entries,
    payments,
    reconciliation_lines,
    reconciliation_reports,
    settlement_batches,
)


async def accounts_of(conn: AsyncConnection, owner_id: str, after: str, limit: int) -> Sequence[Any]:
    a = accounts.c
    query = select(accounts).where(a.owner_id == owner_id)
    if after:
        query = query.where(a.account_id > after)
    return (await conn.execute(query.order_by(a.account_id).limit(limit))).all()


async def payments_of(
    conn: AsyncConnection, account_id: str, after: tuple[datetime, str] | None, limit: int
) -> Sequence[Any]:
    """Payments the account paid or received, newest first."""
    p = payments.c
    query = select(payments).where(or_(p.payer_account_id == account_id, p.payee_account_id == account_id))
    if after is not None:
        moment, payment_id = after
        query = query.where(or_(p.created_at < moment, and_(p.created_at == moment, p.payment_id < payment_id)))
    return (await conn.execute(query.order_by(p.created_at.desc(), p.payment_id.desc()).limit(limit))).all()


async def entries_of(conn: AsyncConnection, account_id: str, before: int | None, limit: int) -> Sequence[Any]:
    e = entries.c
    query = select(entries).where(e.account_id == account_id)
    if before is not None:
        query = query.where(e.entry_id < before)
    return (await conn.execute(query.order_by(e.entry_id.desc()).limit(limit))).all()


async def settlements_of(
    conn: AsyncConnection, merchant_id: str, after: tuple[datetime, str] | None, limit: int
) -> Sequence[Any]:
    s = settlement_batches.c
    query = select(settlement_batches).where(s.merchant_account_id == merchant_id)
    if after is not None:
        moment, batch_id = after
        query = query.where(or_(s.created_at < moment, and_(s.created_at == moment, s.batch_id < batch_id)))
    return (await conn.execute(query.order_by(s.created_at.desc(), s.batch_id.desc()).limit(limit))).all()


# -- the sweeper --------------------------------------------------------------------


async def overdue_operations(conn: AsyncConnection, cutoff: datetime, limit: int) -> list[rows.BankOperation]:
    """PENDING top-ups and payouts created up to `cutoff`, oldest first."""
    c = channel_operations.c
    found = await conn.execute(
        select(channel_operations)
        .where(c.status == "PENDING", c.created_at <= cutoff)
        .order_by(c.created_at)
        .limit(limit)
    )
    return [rows.bank_operation(r) for r in found]


async def stale_authorizations(conn: AsyncConnection, cutoff: datetime, limit: int) -> list[str]:
    """Ids of payments AUTHORIZED (not captured) up to `cutoff`, oldest first."""
    p = payments.c
    found = await conn.execute(
        select(p.payment_id).where(p.status == "AUTHORIZED", p.created_at <= cutoff).order_by(p.created_at).limit(limit)
    )
    return [r.payment_id for r in found]


# -- reconciliation -----------------------------------------------------------------


def _signed(row: Any) -> Booking:
    # From the platform's side: a top-up brought money in, a payout sent it out.
    sign = 1 if row.kind == "TOP_UP" else -1
    return Booking(row.channel_reference, sign * int(row.amount), row.currency)


async def ledger_bookings(
    conn: AsyncConnection, channel: str, references: list[str], statement_end: datetime | None
) -> list[Booking]:
    """Succeeded operations the statement should show: those it names, and unreconciled ones up to its end."""
    c = channel_operations.c
    base = select(channel_operations).where(c.channel == channel, c.status == "SUCCEEDED")
    found: dict[str, Any] = {}
    for start in range(0, len(references), 500):
        chunk = references[start : start + 500]
        found.update({r.channel_reference: r for r in await conn.execute(base.where(c.channel_reference.in_(chunk)))})
    open_query = base.where(c.reconciliation_report_id.is_(None))
    if statement_end is not None:
        open_query = open_query.where(c.created_at <= statement_end)
    found.update({r.channel_reference: r for r in await conn.execute(open_query)})
    return [_signed(row) for row in found.values()]


async def save_report(conn: AsyncConnection, channel: str, lines: list[Line], now: datetime) -> str:
    report_id = str(uuid.uuid4())
    matched = [line.channel_reference for line in lines if line.outcome is Outcome.MATCHED]
    await conn.execute(
        insert(reconciliation_reports).values(
            report_id=report_id,
            channel=channel,
            matched_count=len(matched),
            mismatch_count=len(lines) - len(matched),
            created_at=now,
        )
    )
    if lines:
        await conn.execute(
            insert(reconciliation_lines),
            [
                {
                    "report_id": report_id,
                    "channel_reference": line.channel_reference,
                    "outcome": line.outcome.value,
                    "statement_minor_units": line.statement_minor_units,
                    "ledger_minor_units": line.ledger_minor_units,
                    "currency": line.currency,
                }
                for line in lines
            ],
        )
    c = channel_operations.c
    for start in range(0, len(matched), 500):
        await conn.execute(
            update(channel_operations)
            .where(c.channel == channel, c.channel_reference.in_(matched[start : start + 500]))
            .values(reconciliation_report_id=report_id)
        )
    return report_id


# -- audit --------------------------------------------------------------------------


async def verify_audit(conn: AsyncConnection, page: int = 5000) -> audit.Verification:
    """Walk the whole chain in pages; then compare the head row with the last record."""
    state = audit.Verification()
    after = 0
    while True:
        result = await conn.execute(
            select(audit_log).where(audit_log.c.sequence > after).order_by(audit_log.c.sequence).limit(page)
        )
        records = [audit.AuditRecord(r.sequence, r.recorded_at, r.kind, r.payload, r.prev_hash, r.hash) for r in result]
        if not records:
            break
        audit.verify(records, state)
        after = records[-1].sequence
    head = (await conn.execute(select(audit_head.c.sequence, audit_head.c.hash).where(audit_head.c.id == 1))).first()
    if head is not None:
        audit.verify_head(state, head.sequence, head.hash)
    return state


async def accounts_by_id(conn: AsyncConnection, account_ids: list[str]) -> dict[str, Any]:
    result = await conn.execute(select(accounts).where(accounts.c.account_id.in_(account_ids)))
    return {row.account_id: row for row in result}


async def payment_by_id(conn: AsyncConnection, payment_id: str) -> Any:
    return (await conn.execute(select(payments).where(payments.c.payment_id == payment_id))).first()
