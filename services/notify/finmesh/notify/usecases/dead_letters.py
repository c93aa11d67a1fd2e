"""Dead letters: messages given up on after their retries (or at once, when refused for good), and redriving
one once its cause is fixed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.store import queue
from finmesh.notify.usecases.deps import Deps
from finmesh.platform.storage.idempotency import KeyedCall, Reply


class DeadLetters:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def page(self, after_seq: int, limit: int) -> list[Any]:
        async with self._deps.engine.connect() as conn:
            return await queue.list_dead_letters(conn, after_seq, limit)

    async def redrive(self, call: KeyedCall[Mapping[str, Any], Reply], dead_letter_id: str) -> Reply:
        """Queue the message again with a fresh retry budget (the call's reply is made from its notification row)."""
        d = self._deps
        lanes: list[str] = []

        async def work(conn: AsyncConnection) -> Mapping[str, Any]:
            row = await queue.redrive(conn, dead_letter_id, d.clock.now())
            lanes.append(row.category)
            return row._mapping

        answer = await call.run(d.idempotency, work)
        for lane in lanes:  # a repeat's stored answer wakes nothing: its first call did
            d.wake(lane)
        return answer
