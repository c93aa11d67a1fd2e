"""RegisterUser and GetUser: the identity-number check is the first of the three onboarding steps."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError

from finmesh.identity.api import convert
from finmesh.identity.domain.registration import validate_registration
from finmesh.identity.store import mfa, users
from finmesh.identity.store.schema import outbox
from finmesh.identity.usecases.deps import Deps, load_user
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import AlreadyExists, FieldViolation, InvalidArgument
from finmesh.platform.messaging.outbox import enqueue
from finmesh.platform.observability.logs import get_logger

_log = get_logger("finmesh.identity")
# The same words whichever value is taken, and whoever holds it: no enumeration of users.
_DUPLICATE = "an account with some of these details already exists"
MAX_ID = 36


def require_user_id(user_id: str, field: str = "user_id") -> None:
    if not 0 < len(user_id) <= MAX_ID:
        raise InvalidArgument(FieldViolation(field, "required, at most 36 characters"))


class RegistrationRpcs:
    deps: Deps

    async def RegisterUser(self, request: pb.RegisterUserRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        reg = validate_registration(
            kind=convert.KINDS.get(request.kind, "?"), legal_name=request.legal_name, id_number=request.id_number,
            phone=request.phone, email=request.email, password=request.password, locale=request.locale,
            today=d.today(),
        )
        keyed = d.fingerprinted(request, "legal_name", "id_number", "phone", "email", "password")
        prior = await d.idem.replay("RegisterUser", keyed, pb.RegisterUserResponse)
        if prior is not None:
            return prior
        # argon2 is deliberately slow: keep it off the event loop.
        password_hash = await asyncio.to_thread(d.hasher.hash, reg.password)
        user_id = str(uuid.uuid4())

        async def create(conn: Any) -> pb.RegisterUserResponse:
            if await users.any_holds(conn, d.vault, reg):
                raise AlreadyExists("DUPLICATE_IDENTITY", _DUPLICATE)
            row = await users.insert_user(conn, d.vault, user_id, reg, password_hash, roles=reg.kind)
            await enqueue(conn, outbox, event_type="identity.user.registered.v1", aggregate_id=user_id,
                          user_id=user_id, payload={"user_id": user_id, "kind": reg.kind, "locale": reg.locale})
            return pb.RegisterUserResponse(user=convert.user(row))

        try:
            reply = await d.idem.commit("RegisterUser", keyed, pb.RegisterUserResponse, create)
        except IntegrityError:
            raise AlreadyExists("DUPLICATE_IDENTITY", _DUPLICATE) from None  # lost a race on a blind index
        d.on_commit()
        _log.info("user_registered", user_id=reply.user.user_id, kind=reg.kind)
        return reply

    async def GetUser(self, request: pb.GetUserRequest, context: grpc.aio.ServicerContext) -> Any:
        require_user_id(request.user_id)
        async with self.deps.engine.connect() as conn:
            row = await load_user(conn, request.user_id, allow_erased=True)
            totp_on = await mfa.totp_enabled(conn, row.user_id)
        return pb.GetUserResponse(user=convert.user(row, totp_enabled=totp_on))
