"""IdentityService servicer: registration and user lookup (personal data masked)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
from argon2 import PasswordHasher
from google.protobuf import timestamp_pb2
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.identity.domain.registration import validate_registration
from finmesh.identity.store import users
from finmesh.identity.store.schema import idempotency, outbox
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from finmesh.identity.vault import Vault
from finmesh.platform.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from finmesh.platform.idempotency import IdempotencyStore
from finmesh.platform.logs import get_logger
from finmesh.platform.outbox import enqueue
from finmesh.platform.rpc_errors import to_status

_KINDS = {
    pb.USER_KIND_UNSPECIFIED: "PERSONAL",
    pb.USER_KIND_PERSONAL: "PERSONAL",
    pb.USER_KIND_ENTERPRISE: "ENTERPRISE",
    pb.USER_KIND_INSTITUTION: "INSTITUTION",
}
_log = get_logger("finmesh.identity")
_DUPLICATE = "an account with some of these details already exists"


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, engine: AsyncEngine, vault: Vault, *, today: Any = None, on_commit: Any = None) -> None:
        self._engine = engine
        self._vault = vault
        self._idem = IdempotencyStore(engine, idempotency, to_status)
        self._hasher = PasswordHasher()
        self._today = today or (lambda: datetime.now(UTC).date())
        self._on_commit = on_commit or (lambda: None)

    async def RegisterUser(self, request: pb.RegisterUserRequest, context: grpc.aio.ServicerContext) -> Any:
        reg = validate_registration(
            kind=_KINDS.get(request.kind, "?"),
            legal_name=request.legal_name,
            id_number=request.id_number,
            phone=request.phone,
            email=request.email,
            password=request.password,
            locale=request.locale,
            today=self._today(),
        )
        prior = await self._idem.replay("RegisterUser", request, pb.RegisterUserResponse)
        if prior is not None:
            return prior
        # argon2 is deliberately slow: keep it off the event loop.
        password_hash = await asyncio.to_thread(self._hasher.hash, reg.password)
        user_id = str(uuid.uuid4())

        async def create(conn: Any) -> pb.RegisterUserResponse:
            if await users.any_holds(conn, self._vault, reg):
                raise AlreadyExists("DUPLICATE_IDENTITY", _DUPLICATE)
            row = await users.insert_user(conn, self._vault, user_id, reg, password_hash, roles=reg.kind)
            await enqueue(conn, outbox, event_type="identity.user.registered.v1", aggregate_id=user_id,
                          user_id=user_id, payload={"user_id": user_id, "kind": reg.kind, "locale": reg.locale})
            return pb.RegisterUserResponse(user=_to_proto(row))

        try:
            reply = await self._idem.commit("RegisterUser", request, pb.RegisterUserResponse, create)
        except IntegrityError:
            raise AlreadyExists("DUPLICATE_IDENTITY", _DUPLICATE) from None  # lost a race on a blind index
        self._on_commit()
        _log.info("user_registered", user_id=reply.user.user_id, kind=reg.kind)
        return reply

    async def GetUser(self, request: pb.GetUserRequest, context: grpc.aio.ServicerContext) -> Any:
        if not 0 < len(request.user_id) <= 36:
            raise InvalidArgument(FieldViolation("user_id", "required"))
        async with self._engine.connect() as conn:
            row = await users.get_user(conn, request.user_id)
        if row is None:
            raise NotFound("USER_NOT_FOUND", "user not found")
        return pb.GetUserResponse(user=_to_proto(row))


def _state(value: str) -> int:
    return pb.VerificationState.Value(f"VERIFICATION_STATE_{value}")


def _to_proto(row: Any) -> pb.User:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC))
    checks = (row.id_number_check, row.contact_check, row.real_name_check)
    return pb.User(
        user_id=row.user_id,
        kind=pb.UserKind.Value(f"USER_KIND_{row.kind}"),
        legal_name_masked=row.legal_name_masked,
        id_number_masked=row.id_number_masked,
        phone_masked=row.phone_masked,
        email_masked=row.email_masked,
        verifications=pb.Verifications(
            id_number=_state(row.id_number_check),
            contact=_state(row.contact_check),
            real_name=_state(row.real_name_check),
        ),
        may_transact=all(c == "PASSED" for c in checks) and row.erased_at is None,
        risk_tier=pb.RiskTier.Value(f"RISK_TIER_{row.risk_tier}"),
        roles=[pb.Role.Value(f"ROLE_{r}") for r in row.roles.split(",") if r],
        locale=row.locale,
        created_at=created,
        erased=row.erased_at is not None,
    )


