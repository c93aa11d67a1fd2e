"""Block lists: entries operators add and remove, active until removed or expired."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.platform.errors import AlreadyExists, NotFound
from finmesh.platform.storage.idempotency import IdempotencyStore, KeyedCall, Reply
from finmesh.risk.domain.values import BlockKind
from finmesh.risk.store import blocklist as store


class BlockList:
    def __init__(self, engine: AsyncEngine, answers: IdempotencyStore) -> None:
        self._engine = engine
        self._answers = answers

    async def add(
        self,
        call: KeyedCall[Any, Reply],
        *,
        kind: BlockKind,
        value: str,
        reason: str,
        expires_at: datetime | None,
        now: datetime,
    ) -> Reply:
        """List `value`; one active entry per (kind, value), so a second is refused with the first one's id."""

        async def add(conn: AsyncConnection) -> Any:
            existing = await store.find_active(conn, kind.value, value, now)
            if existing is not None:
                raise AlreadyExists(
                    "BLOCK_LIST_ENTRY_EXISTS", "an active entry already blocks this value", entry_id=existing.entry_id
                )
            return await store.add(
                conn,
                entry_id=str(uuid.uuid4()),
                kind=kind.value,
                value=value,
                reason=reason,
                created_at=now,
                expires_at=expires_at,
            )

        return await call.run(self._answers, add)

    async def remove(self, call: KeyedCall[None, Reply], entry_id: str) -> Reply:
        """End an active entry; the row stays for audit."""

        async def remove(conn: AsyncConnection) -> None:
            if not await store.remove(conn, entry_id, datetime.now(UTC)):
                raise NotFound(
                    "BLOCK_LIST_ENTRY_NOT_FOUND", "no active block list entry with this id", entry_id=entry_id
                )

        return await call.run(self._answers, remove)

    async def page(self, kind: BlockKind | None, before_seq: int | None, size: int) -> list[Any]:
        """Active entries newest first, `size` + 1 rows so the caller can tell whether more follow."""
        async with self._engine.connect() as conn:
            return await store.page(conn, kind, datetime.now(UTC), before_seq, size)
