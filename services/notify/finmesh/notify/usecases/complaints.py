"""Complaint tickets: opened with three deadlines from the business calendar, moved one step at a time.

A late step records its missed deadline itself (finmesh.notify.usecases.sla sweeps for the rest). Stored
replies are not sealed (idempotency rows), so the views a mutating call's reply is made from carry no complaint
text, which an erasure could not reach there; callers add the subject from subject()."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.notify.domain.complaints import OPEN, check_transition, deadlines
from finmesh.notify.domain.templates import resolve_locale
from finmesh.notify.store import complaints as store
from finmesh.notify.store import erasure, profiles, queue
from finmesh.notify.store.sealing import Sealer
from finmesh.notify.usecases.compose import Draft
from finmesh.notify.usecases.deps import Deps
from finmesh.notify.usecases.sla import ComplaintSla
from finmesh.platform.errors import NotFound
from finmesh.platform.storage.idempotency import KeyedCall, Reply


def new_complaint_id(millis: int) -> str:
    """Time-ordered (so listing pages run in opening order), unique by its random tail; 36 characters."""
    return f"{millis:012x}-{uuid.uuid4().hex[:23]}"


def _subject(row: Any, sealer: Sealer) -> str:
    # An erased complainant's texts are overwritten with b"" (finmesh.notify.store.erasure).
    return sealer.open(f"{row.complaint_id}:subject", row.subject_sealed) if row.subject_sealed else ""


def _view(row: Any, subject: str) -> dict[str, Any]:
    return {**row._mapping, "subject": subject}


class Complaints:
    def __init__(self, deps: Deps, sla: ComplaintSla) -> None:
        self._deps = deps
        self._sla = sla

    async def open(self, call: KeyedCall[Mapping[str, Any], Reply], user_id: str, subject: str, body: str) -> Reply:
        """Open the ticket and put a receipt in the complainant's inbox."""
        d = self._deps

        async def work(conn: AsyncConnection) -> Mapping[str, Any]:
            now = d.clock.now()
            await erasure.refuse_if_erased(conn, user_id)
            cid = new_complaint_id(int(now.timestamp() * 1000))
            due = deadlines(now, d.settings.calendar())
            row = await store.insert_complaint(
                conn,
                {
                    "complaint_id": cid,
                    "user_id": user_id,
                    "subject_sealed": d.sealer.seal(f"{cid}:subject", subject.strip()),
                    "body_sealed": d.sealer.seal(f"{cid}:body", body),
                    "state": OPEN,
                    "opened_at": now,
                    "accept_due": due.accept_due,
                    "respond_due": due.respond_due,
                    "resolve_due": due.resolve_due,
                    "escalated": False,
                },
            )
            known = await profiles.locales(conn, {user_id})
            receipt = Draft(
                user_id,
                "INBOX",
                "TRANSACTIONAL",
                "complaint_received",
                resolve_locale("", known.get(user_id, "")),
                {"complaint_id": cid},
            )
            await queue.add(conn, [d.composer.row(receipt, now)])
            return _view(row, "")

        return await call.run(d.idempotency, work)

    async def advance(
        self, call: KeyedCall[Mapping[str, Any], Reply], complaint_id: str, target: str, note: str
    ) -> Reply:
        """Accept, respond or resolve: the next step only."""
        d = self._deps

        async def work(conn: AsyncConnection) -> Mapping[str, Any]:
            now = d.clock.now()
            row = await store.get(conn, complaint_id, lock=True)
            if row is None:
                raise NotFound("COMPLAINT_NOT_FOUND", "complaint not found")
            check_transition(row.state, target)
            # A late step still counts as a missed deadline, even if the sweeper has not run yet.
            await self._sla.escalate_due(conn, row, now)
            sealed_note = d.sealer.seal(f"{row.complaint_id}:note:{target}", note) if note else None
            moved = await store.move(conn, row, target, sealed_note, now)
            if moved is None:
                check_transition((await store.get(conn, row.complaint_id)).state, target)
            return _view(moved, "")

        return await call.run(d.idempotency, work)

    async def subject(self, complaint_id: str) -> str:
        """Read from the sealed row, so a repeat's answer after an erasure shows it erased."""
        async with self._deps.engine.connect() as conn:
            row = await store.get(conn, complaint_id)
        return _subject(row, self._deps.sealer) if row is not None else ""

    async def get(self, complaint_id: str) -> dict[str, Any] | None:
        async with self._deps.engine.connect() as conn:
            row = await store.get(conn, complaint_id)
        return _view(row, _subject(row, self._deps.sealer)) if row is not None else None

    async def page(self, state: str, after: str, limit: int) -> list[dict[str, Any]]:
        async with self._deps.engine.connect() as conn:
            rows = await store.page(conn, state, after, limit)
        return [_view(row, _subject(row, self._deps.sealer)) for row in rows]
