"""EnrollTotp and ConfirmTotp: an authenticator app as the second factor (RFC 6238)."""

from __future__ import annotations

from finmesh.identity.api import convert
from finmesh.identity.api.requests import Context, require_user_id
from finmesh.identity.domain.otp import well_formed
from finmesh.identity.usecases import mfa
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.auth.context import require_owner
from finmesh.platform.errors import FieldViolation, InvalidArgument
from finmesh.platform.storage.idempotency import KeyedCall, validate_key


class TotpRpcs:
    deps: Deps

    async def EnrollTotp(self, request: pb.EnrollTotpRequest, context: Context) -> pb.EnrollTotpResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        require_owner(request.user_id, "authenticator")
        return await mfa.enroll(
            d,
            KeyedCall(
                "EnrollTotp", request, pb.EnrollTotpResponse, lambda uri: pb.EnrollTotpResponse(provisioning_uri=uri)
            ),
            request.user_id,
        )

    async def ConfirmTotp(self, request: pb.ConfirmTotpRequest, context: Context) -> pb.ConfirmTotpResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if not well_formed(request.code):
            raise InvalidArgument(FieldViolation("code", "six digits"))
        require_owner(request.user_id, "authenticator")
        return await mfa.confirm(
            d,
            KeyedCall(
                "ConfirmTotp",
                d.fingerprinted(request, "code"),
                pb.ConfirmTotpResponse,
                lambda user: pb.ConfirmTotpResponse(user=convert.user(user)),
            ),
            request.user_id,
            request.code,
        )
