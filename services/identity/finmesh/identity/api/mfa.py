"""TOTP enrolment (RFC 6238): a 160-bit secret sealed with the user's data key, confirmed by a first code."""

from __future__ import annotations

import base64
from typing import Any

import grpc

from finmesh.identity.api import convert
from finmesh.identity.api.login import totp_secret
from finmesh.identity.api.registration import require_user_id
from finmesh.identity.domain import totp
from finmesh.identity.domain.otp import well_formed
from finmesh.identity.store import mfa, users
from finmesh.identity.usecases.deps import Deps, load_user
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.auth.context import require_owner
from finmesh.platform.errors import FailedPrecondition, FieldViolation, InvalidArgument
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import validate_key

_log = get_logger("finmesh.identity")


class TotpRpcs:
    deps: Deps

    async def EnrollTotp(self, request: pb.EnrollTotpRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        require_owner(request.user_id, "authenticator")
        # The answer carries the secret: stored sealed, so a replay shows the same secret and nothing else can.
        prior = await d.sealed.replay("EnrollTotp", request, pb.EnrollTotpResponse)
        if prior is not None:
            return prior

        async def op(conn: Any) -> pb.EnrollTotpResponse:
            row = await load_user(conn, request.user_id)
            if await mfa.totp_enabled(conn, row.user_id):
                raise FailedPrecondition("INVALID_STATE", "an authenticator is already enrolled")
            secret = totp.new_secret()
            sealed = d.vault.encrypt(row.wrapped_key, row.user_id, "totp_secret", base64.b32encode(secret).decode())
            await mfa.put_totp(conn, row.user_id, sealed)
            return pb.EnrollTotpResponse(provisioning_uri=totp.provisioning_uri(secret, row.user_id))

        reply = await d.sealed.commit("EnrollTotp", request, pb.EnrollTotpResponse, op)
        _log.info("totp_enrolment_started", user_id=request.user_id)
        return reply

    async def ConfirmTotp(self, request: pb.ConfirmTotpRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if not well_formed(request.code):
            raise InvalidArgument(FieldViolation("code", "six digits"))
        require_owner(request.user_id, "authenticator")
        keyed = d.fingerprinted(request, "code")
        prior = await d.idem.replay("ConfirmTotp", keyed, pb.ConfirmTotpResponse)
        if prior is not None:
            return prior

        async def op(conn: Any) -> pb.ConfirmTotpResponse:
            row = await load_user(conn, request.user_id)
            enrolment = await mfa.get_totp(conn, row.user_id)
            if enrolment is None or enrolment.enabled:
                raise FailedPrecondition("INVALID_STATE", "no authenticator enrolment to confirm")
            step = totp.matching_step(totp_secret(d, row, enrolment), request.code, d.clock(), enrolment.last_step)
            if step is None or not await mfa.accept_step(conn, row.user_id, step, enable=True):
                raise FailedPrecondition("CODE_INVALID", "wrong authenticator code")
            return pb.ConfirmTotpResponse(user=convert.user(await users.get_user(conn, row.user_id),
                                                            totp_enabled=True))

        reply = await d.idem.commit("ConfirmTotp", keyed, pb.ConfirmTotpResponse, op)
        _log.info("totp_enabled", user_id=request.user_id)
        return reply
