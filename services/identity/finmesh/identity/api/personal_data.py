"""Clear personal data on purpose only (audited), erasure by crypto-shredding, and the access log (seed 3.4)."""

from __future__ import annotations

from typing import Any

import grpc

from finmesh.identity.api import convert
from finmesh.identity.api.registration import require_user_id
from finmesh.identity.store import challenges, mfa, pii_log, sessions, users
from finmesh.identity.store.schema import outbox
from finmesh.identity.usecases.deps import Deps, load_user
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.auth.context import accessor_id
from finmesh.platform.errors import FieldViolation, InvalidArgument, Validator
from finmesh.platform.messaging.outbox import enqueue
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.privacy.pii import mask_text
from finmesh.platform.storage.idempotency import validate_key

_log = get_logger("finmesh.identity")
_FIELDS = {
    pb.PERSONAL_DATA_FIELD_LEGAL_NAME: "legal_name",
    pb.PERSONAL_DATA_FIELD_ID_NUMBER: "id_number",
    pb.PERSONAL_DATA_FIELD_PHONE: "phone",
    pb.PERSONAL_DATA_FIELD_EMAIL: "email",
}
_BY_NAME = {name: number for number, name in _FIELDS.items()}
MAX_PAGE = 200


class PersonalDataRpcs:
    deps: Deps

    async def RevealPersonalData(self, request: pb.RevealPersonalDataRequest,
                                 context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        v = Validator()
        v.require(0 < len(request.user_id) <= 36, "user_id", "required")
        v.require(0 < len(request.fields) <= 4 and all(f in _FIELDS for f in request.fields), "fields",
                  "one or more of LEGAL_NAME, ID_NUMBER, PHONE, EMAIL")
        v.require(3 <= len(request.purpose.strip()) <= 200, "purpose", "why the clear data is needed, 3 to 200 chars")
        v.raise_if_any()
        names = sorted({_FIELDS[f] for f in request.fields})
        # The access is on record (committed) before any clear value leaves this service.
        async with d.engine.begin() as conn:
            row = await load_user(conn, request.user_id)
            await pii_log.record(conn, user_id=row.user_id, accessor_id=accessor_id(), fields=names,
                                 purpose=mask_text(request.purpose.strip()), now=d.now())
        _log.info("pii_revealed", user_id=row.user_id, accessor_id=accessor_id(), fields=names)
        return pb.RevealPersonalDataResponse(**{name: users.reveal(d.vault, row, name) for name in names})

    async def EraseUser(self, request: pb.EraseUserRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if not 0 < len(request.reason) <= 200:
            raise InvalidArgument(FieldViolation("reason", "required, at most 200 characters"))

        async def op(conn: Any) -> pb.EraseUserResponse:
            row = await load_user(conn, request.user_id, allow_erased=True)
            if row.erased_at is None:
                now = d.now()
                await users.erase(conn, row.user_id, now)
                await mfa.delete_totp(conn, row.user_id)
                await sessions.revoke_user(conn, row.user_id, now)
                await challenges.forget_user(conn, row.user_id, now)
                await enqueue(conn, outbox, event_type="identity.user.erased.v1", aggregate_id=row.user_id,
                              user_id=row.user_id, payload={"user_id": row.user_id})
            return pb.EraseUserResponse(user=convert.user(await users.get_user(conn, row.user_id)))

        reply = await d.idem.run("EraseUser", request, pb.EraseUserResponse, op)
        d.on_commit()
        _log.info("user_erased", user_id=request.user_id, accessor_id=accessor_id())
        return reply

    async def ListPiiAccessLog(self, request: pb.ListPiiAccessLogRequest,
                               context: grpc.aio.ServicerContext) -> Any:
        v = Validator()
        v.require(len(request.user_id) <= 36, "user_id", "at most 36 characters")
        v.require(0 <= request.page_size <= MAX_PAGE, "page_size", f"0 to {MAX_PAGE}")
        # isascii too: str.isdigit passes "²", which int() refuses.
        v.require(request.page_token == "" or (request.page_token.isascii() and request.page_token.isdigit()
                                               and len(request.page_token) < 19),
                  "page_token", "a token from a previous page")
        v.raise_if_any()
        size = request.page_size or 50
        async with self.deps.engine.connect() as conn:
            rows = await pii_log.page(conn, user_id=request.user_id, after_id=int(request.page_token or 0),
                                      limit=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListPiiAccessLogResponse(
            entries=[pb.PiiAccess(user_id=r.user_id, accessor_id=r.accessor_id, purpose=r.purpose,
                                  fields=[_BY_NAME[f] for f in r.fields.split(",") if f in _BY_NAME],
                                  accessed_at=convert.timestamp(r.accessed_at)) for r in rows],
            next_page_token=str(rows[-1].id) if more else "",
        )
