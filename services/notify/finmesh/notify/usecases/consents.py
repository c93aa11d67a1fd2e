"""Marketing consent: recorded with quiet hours and time zone, every change kept as evidence."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.consent import DEFAULT_TIME_ZONE
from finmesh.notify.store import consents, erasure, profiles
from finmesh.notify.usecases.deps import Call, Deps, M


class Consents:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def set_marketing(self, call: Call[M], user_id: str, granted: bool, quiet_hours_start: str,
                            quiet_hours_end: str, time_zone: str, reply: Callable[[Mapping[str, Any]], M]) -> M:
        d = self._deps

        async def work(conn: AsyncConnection) -> M:
            now = d.clock.now()
            await erasure.refuse_if_erased(conn, user_id)
            zone = time_zone or DEFAULT_TIME_ZONE
            row = await consents.record(conn, {
                "user_id": user_id, "category": "MARKETING", "granted": granted,
                "quiet_hours_start": quiet_hours_start, "quiet_hours_end": quiet_hours_end, "time_zone": zone,
            }, now)
            await profiles.remember(conn, user_id, now, time_zone=zone)
            return reply(row._mapping)

        answer = await call.once(d, work)
        # Messages deferred for quiet hours are re-checked at send time; wake the lane to see the change.
        d.wake("MARKETING")
        return answer

    async def get(self, user_id: str, category: str) -> Any:
        async with self._deps.engine.connect() as conn:
            return await consents.get(conn, user_id, category)
