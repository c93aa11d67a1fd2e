"""Complaint deadlines: a sweeper escalates every missed one to the operators, once per deadline."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.complaints import Deadlines, breached_stages
from finmesh.notify.store import complaints as store
from finmesh.notify.store import queue
from finmesh.notify.usecases.compose import operator_drafts
from finmesh.notify.usecases.deps import Deps
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import aware

_log = get_logger("finmesh.notify.sla")

_STAGE_NAMES = {
    "zh-CN": {"accept": "受理", "respond": "答复", "resolve": "办结"},
    "en": {"accept": "accept", "respond": "respond", "resolve": "resolve"},
}


def deadlines_of(row: Any) -> Deadlines:
    return Deadlines(aware(row.accept_due), aware(row.respond_due), aware(row.resolve_due))


class ComplaintSla:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify-complaint-sla")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:  # noqa: BLE001 - the sweeper must outlive a database hiccup
                _log.exception("complaint_sweep_failed")
            await asyncio.sleep(self._deps.settings.sla_check_seconds)

    async def sweep_once(self) -> int:
        """Escalate every deadline that passed unmet; return how many escalations were raised."""
        now = self._deps.clock.now()
        raised = 0
        async with self._deps.engine.connect() as conn:
            candidates = await store.overdue(conn, now)
        for row in candidates:
            async with self._deps.engine.begin() as conn:
                raised += len(await self.escalate_due(conn, row, now))
        if raised:
            self._deps.wake("TRANSACTIONAL")
        return raised

    async def escalate_due(self, conn: AsyncConnection, row: Any, now: datetime) -> list[str]:
        """In the caller's transaction: record each newly missed deadline and alert the operators."""
        already = await store.escalated_stages(conn, row.complaint_id)
        raised = []
        for stage in breached_stages(row.state, deadlines_of(row), now, already):
            if not await store.claim_escalation(conn, row.complaint_id, stage, now):
                continue
            raised.append(stage)
            s = self._deps.settings
            locale = s.operator_locale if s.operator_locale in _STAGE_NAMES else "zh-CN"
            params = {
                "complaint_id": row.complaint_id,
                "stage": _STAGE_NAMES[locale][stage],
                "due": deadlines_of(row).due(stage).isoformat(timespec="minutes"),
                "state": row.state,
            }
            drafts = operator_drafts(
                "complaint_escalated", "TRANSACTIONAL", params, locale=locale, emails=s.operator_emails, phones=[]
            )
            await queue.add(conn, [self._deps.composer.row(d, now) for d in drafts])
            _log.warning("complaint_escalated", complaint_id=row.complaint_id, stage=stage)
        return raised
