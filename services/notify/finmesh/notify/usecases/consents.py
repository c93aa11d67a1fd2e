"""Marketing consent: recorded with quiet hours and time zone, every change kept as evidence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.consent import DEFAULT_TIME_ZONE
from finmesh.notify.store import consents, erasure, profiles
from finmesh.notify.usecases.deps import Deps
from finmesh.platform.storage.idempotency import KeyedCall, Reply


class Consents:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def set_marketing(
        self,
        call: KeyedCall[Mapping[str, Any], Reply],
        user_id: str,
        granted: bool,
        quiet_hours_start: str,
        quiet_hours_end: str,
        time_zone: str,
    ) -> Reply:
        d = self._deps

        async def work(conn: AsyncConnection) -> Mapping[str, Any]:
            now = d.clock.now()
            await erasure.refuse_if_erased(conn, user_id)
            zone = time_zone or DEFAULT_TIME_ZONE
            row = await consents.record(
                conn,
                {
                    "user_id": user_id,
                    "category": "MARKETING",
                    "granted": granted,
                    "quiet_hours_start": quiet_hours_start,
                    "quiet_hours_end": quiet_hours_end,
                    "time_zone": zone,
                },
                now,
            )
            await profiles.remember(conn, user_id, now, time_zone=zone)
            return row._mapping

        answer = await call.run(d.idempotency, work)
        # Messages deferred for quiet hours are re-checked at send time; wake the lane to see the change.
        d.wake("MARKETING")
        return answer

    async def get(self, user_id: str, category: str) -> Any:
        async with self._deps.engine.connect() as conn:
            return await consents.get(conn, user_id, category)
