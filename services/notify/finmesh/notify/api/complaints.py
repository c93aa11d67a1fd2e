"""Complaint RPCs: open, advance (accept, respond, resolve), read."""

from __future__ import annotations

from typing import Any

from finmesh.notify.api import Context, convert, validate
from finmesh.notify.usecases.complaints import Complaints
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.platform.errors import NotFound, Validator
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall

_log = get_logger("finmesh.notify.complaints")


class ComplaintRpcs:
    _complaints: Complaints

    async def OpenComplaint(self, request: pb.OpenComplaintRequest, context: Context) -> Any:
        validate.complaint_open(request)
        reply = await self._complaints.open(
            KeyedCall(
                "OpenComplaint",
                request,
                pb.OpenComplaintResponse,
                lambda row: pb.OpenComplaintResponse(complaint=convert.complaint(row)),
            ),
            request.user_id,
            request.subject,
            request.body,
        )
        # The stored reply holds no complaint text (an erasure could not reach it there).
        reply.complaint.subject = await self._complaints.subject(reply.complaint.complaint_id)
        _log.info("complaint_opened", complaint_id=reply.complaint.complaint_id)
        return reply

    async def AdvanceComplaint(self, request: pb.AdvanceComplaintRequest, context: Context) -> Any:
        target = validate.complaint_advance(request)
        reply = await self._complaints.advance(
            KeyedCall(
                "AdvanceComplaint",
                request,
                pb.AdvanceComplaintResponse,
                lambda row: pb.AdvanceComplaintResponse(complaint=convert.complaint(row)),
            ),
            request.complaint_id,
            target,
            request.note,
        )
        reply.complaint.subject = await self._complaints.subject(reply.complaint.complaint_id)
        _log.info("complaint_advanced", complaint_id=request.complaint_id, state=target)
        return reply

    async def GetComplaint(self, request: pb.GetComplaintRequest, context: Context) -> Any:
        validate.required_id(request.complaint_id, "complaint_id")
        complaint = await self._complaints.get(request.complaint_id)
        if complaint is None:
            raise NotFound("COMPLAINT_NOT_FOUND", "complaint not found")
        return pb.GetComplaintResponse(complaint=convert.complaint(complaint))

    async def ListComplaints(self, request: pb.ListComplaintsRequest, context: Context) -> Any:
        v = Validator()
        size = validate.page(v, request.page_size, request.page_token)
        v.raise_if_any()
        state = validate.ALL_STATES.get(request.state, "")
        found = await self._complaints.page(state, request.page_token, size + 1)
        more = len(found) > size
        found = found[:size]
        return pb.ListComplaintsResponse(
            complaints=[convert.complaint(c) for c in found],
            next_page_token=found[-1]["complaint_id"] if more else "",
        )
