"""Payment and channel-operation rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.payments.store.schema import channel_operations, payments
from finmesh.platform.errors import FailedPrecondition, NotFound


async def insert_payment(conn: AsyncConnection, **values: Any) -> Any:
    now = datetime.now(UTC)
    await conn.execute(insert(payments).values(created_at=now, updated_at=now, **values))
    return await get_payment(conn, values["payment_id"])


async def get_payment(conn: AsyncConnection, payment_id: str) -> Any:
    return (await conn.execute(select(payments).where(payments.c.payment_id == payment_id))).first()


async def require_payment(conn: AsyncConnection, payment_id: str) -> Any:
    row = await get_payment(conn, payment_id)
    if row is None:
        raise NotFound("PAYMENT_NOT_FOUND", "payment not found", payment_id=payment_id)
    return row


async def update_payment(conn: AsyncConnection, payment_id: str, expected_status: str, **values: Any) -> Any:
    """Change a payment only if it is still in `expected_status` (a concurrent change loses)."""
    result = await conn.execute(
        update(payments)
        .where(payments.c.payment_id == payment_id, payments.c.status == expected_status)
        .values(updated_at=datetime.now(UTC), **values)
    )
    if result.rowcount != 1:
        raise FailedPrecondition("INVALID_STATE", "the payment changed concurrently; read it again")
    return await get_payment(conn, payment_id)


async def insert_channel_operation(conn: AsyncConnection, **values: Any) -> Any:
    await conn.execute(insert(channel_operations).values(created_at=datetime.now(UTC), **values))
    return (
        await conn.execute(
            select(channel_operations).where(channel_operations.c.operation_id == values["operation_id"])
        )
    ).first()
