"""The reads RPCs make outside the ledger writer, on the read engine: each on a pooled connection of its own,
held only for its statements (see finmesh.platform.storage.db.create_read_engine).

Nothing here writes, and no answer is authoritative for a change: the ledger writer reads again in its own
transaction. Owners, kinds and currencies of accounts and the parties of a payment never change, so checks
on them (who may act) hold on these reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments.domain.audit import Verification
from finmesh.payments.store import precheck, queries
from finmesh.payments.store.precheck import PaymentSnapshot
from finmesh.payments.store.schema import idempotency
from finmesh.platform.storage.db import OnDemandReads, on_demand_reads, read_sync
from finmesh.platform.storage.idempotency import stored_answers


class Reads:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def on_demand(self) -> OnDemandReads:
        """`async with reads.on_demand() as conn`: a connection opened only if a statement needs one."""
        return on_demand_reads(self._engine)

    async def accounts(self, account_ids: list[str]) -> dict[str, Any]:
        """The rows of the accounts found, by id."""
        async with self._engine.connect() as conn:
            return await queries.accounts_by_id(conn, account_ids)

    async def account(self, account_id: str) -> Any:
        return (await self.accounts([account_id])).get(account_id)

    async def payment(self, payment_id: str) -> Any:
        async with self._engine.connect() as conn:
            return await queries.payment_by_id(conn, payment_id)

    async def payment_and_payee(self, payment_id: str) -> tuple[Any, Any]:
        """A payment's row and its payee account's (None for either not found), on one connection."""
        async with self._engine.connect() as conn:
            payment = await queries.payment_by_id(conn, payment_id)
            if payment is None:
                return None, None
            found = await queries.accounts_by_id(conn, [payment.payee_account_id])
        return payment, found.get(payment.payee_account_id)

    async def accounts_of(self, owner_id: str, after: str, limit: int) -> Sequence[Any]:
        async with self._engine.connect() as conn:
            return await queries.accounts_of(conn, owner_id, after, limit)

    async def payments_of(self, account_id: str, after: tuple[datetime, str] | None, limit: int) -> Sequence[Any]:
        async with self._engine.connect() as conn:
            return await queries.payments_of(conn, account_id, after, limit)

    async def entries_of(self, account_id: str, before: int | None, limit: int) -> Sequence[Any]:
        async with self._engine.connect() as conn:
            return await queries.entries_of(conn, account_id, before, limit)

    async def settlements_of(self, merchant_id: str, after: tuple[datetime, str] | None, limit: int) -> Sequence[Any]:
        async with self._engine.connect() as conn:
            return await queries.settlements_of(conn, merchant_id, after, limit)

    async def verify_audit(self) -> Verification:
        async with self._engine.connect() as conn:
            return await queries.verify_audit(conn)

    async def stored_answer(self, method: str, scope: str, key: str) -> Mapping[str, Any] | None:
        """The answer stored for the caller's (method, key) (finmesh.platform.storage.idempotency), or None."""
        async with self._engine.connect() as conn:
            return (await stored_answers(conn, idempotency, [(method, key)])).get(method, scope, key)

    async def payment_snapshot(
        self, method: str, scope: str, key: str, parties: tuple[str, str], day: str
    ) -> PaymentSnapshot:
        """store.precheck.payment_snapshot in one statement, without a transaction around it (it needs none)."""
        return await read_sync(
            self._engine,
            lambda conn: precheck.payment_snapshot(conn, method, scope, key, parties, day),
            autocommit=True,
        )
