"""Complaint RPCs: open, advance (accept, respond, resolve), read; deadlines from the business calendar."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.api import convert, validate
from finmesh.notify.clock import Clock
from finmesh.notify.compose import Composer, Draft
from finmesh.notify.config import NotifySettings
from finmesh.notify.domain.complaints import OPEN, check_transition, deadlines
from finmesh.notify.domain.templates import resolve_locale
from finmesh.notify.sealing import Sealer
from finmesh.notify.sla import ComplaintSla
from finmesh.notify.store import complaints as store
from finmesh.notify.store import erasure, profiles
from finmesh.notify.store.schema import notifications
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.errors import NotFound, Validator
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import IdempotencyStore

_log = get_logger("finmesh.notify.complaints")


def new_complaint_id(millis: int) -> str:
    """Time-ordered (so listing pages run in opening order), unique by its random tail; 36 characters."""
    return f"{millis:012x}-{uuid.uuid4().hex[:23]}"


def _without_text(complaint: pb.Complaint) -> pb.Complaint:
    """Stored replies are not sealed (idempotency rows), so they keep no complaint text: erasure could not
    reach it there. The caller's copy gets the subject back from the sealed row."""
    complaint.subject = ""
    return complaint


class ComplaintRpcs:
    _engine: AsyncEngine
    _idem: IdempotencyStore
    _clock: Clock
    _sealer: Sealer
    _composer: Composer
    _settings: NotifySettings
    _sla: ComplaintSla

    async def OpenComplaint(self, request: pb.OpenComplaintRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.complaint_open(request)

        async def op(conn: Any) -> pb.OpenComplaintResponse:
            now = self._clock.now()
            await erasure.refuse_if_erased(conn, request.user_id)
            cid = new_complaint_id(int(now.timestamp() * 1000))
            due = deadlines(now, self._settings.calendar())
            row = await store.insert_complaint(conn, {
                "complaint_id": cid, "user_id": request.user_id,
                "subject_sealed": self._sealer.seal(f"{cid}:subject", request.subject.strip()),
                "body_sealed": self._sealer.seal(f"{cid}:body", request.body),
                "state": OPEN, "opened_at": now, "accept_due": due.accept_due, "respond_due": due.respond_due,
                "resolve_due": due.resolve_due, "escalated": False,
            })
            known = await profiles.locales(conn, {request.user_id})
            receipt = Draft(request.user_id, "INBOX", "TRANSACTIONAL", "complaint_received",
                            resolve_locale("", known.get(request.user_id, "")), {"complaint_id": cid})
            await conn.execute(insert(notifications).values(**self._composer.row(receipt, now)))
            return pb.OpenComplaintResponse(complaint=_without_text(convert.complaint(row._mapping, self._sealer)))

        reply = await self._idem.run("OpenComplaint", request, pb.OpenComplaintResponse, op)
        await self._add_text(reply.complaint)
        _log.info("complaint_opened", complaint_id=reply.complaint.complaint_id)
        return reply

    async def AdvanceComplaint(self, request: pb.AdvanceComplaintRequest,
                               context: grpc.aio.ServicerContext) -> Any:
        target = validate.complaint_advance(request)

        async def op(conn: Any) -> pb.AdvanceComplaintResponse:
            now = self._clock.now()
            row = await store.get(conn, request.complaint_id, lock=True)
            if row is None:
                raise NotFound("COMPLAINT_NOT_FOUND", "complaint not found")
            check_transition(row.state, target)
            # A late step still counts as a missed deadline, even if the sweeper has not run yet.
            await self._sla.escalate_due(conn, row, now)
            note = self._sealer.seal(f"{row.complaint_id}:note:{target}", request.note) if request.note else None
            moved = await store.move(conn, row, target, note, now)
            if moved is None:
                check_transition((await store.get(conn, row.complaint_id)).state, target)
            return pb.AdvanceComplaintResponse(complaint=_without_text(convert.complaint(moved._mapping, self._sealer)))

        reply = await self._idem.run("AdvanceComplaint", request, pb.AdvanceComplaintResponse, op)
        await self._add_text(reply.complaint)
        _log.info("complaint_advanced", complaint_id=request.complaint_id, state=target)
        return reply

    async def _add_text(self, complaint: pb.Complaint) -> None:
        """The subject, read from its sealed row (so a replay after an erasure shows it erased)."""
        async with self._engine.connect() as conn:
            row = await store.get(conn, complaint.complaint_id)
        complaint.subject = convert.complaint(row._mapping, self._sealer).subject if row is not None else ""

    async def GetComplaint(self, request: pb.GetComplaintRequest, context: grpc.aio.ServicerContext) -> Any:
        validate.required_id(request.complaint_id, "complaint_id")
        async with self._engine.connect() as conn:
            row = await store.get(conn, request.complaint_id)
        if row is None:
            raise NotFound("COMPLAINT_NOT_FOUND", "complaint not found")
        return pb.GetComplaintResponse(complaint=convert.complaint(row._mapping, self._sealer))

    async def ListComplaints(self, request: pb.ListComplaintsRequest, context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        size = validate.page(v, request.page_size, request.page_token)
        v.raise_if_any()
        state = validate.ALL_STATES.get(request.state, "")
        async with self._engine.connect() as conn:
            rows = await store.page(conn, state, request.page_token, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListComplaintsResponse(
            complaints=[convert.complaint(r._mapping, self._sealer) for r in rows],
            next_page_token=rows[-1].complaint_id if more else "",
        )
