"""StartVerification, ConfirmVerification and CheckRealName: onboarding steps two and three."""

from __future__ import annotations

from finmesh.identity.api import convert
from finmesh.identity.api.requests import Context, deadline, require_user_id, validate_code_request
from finmesh.identity.usecases import verification
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import FieldViolation, InvalidArgument
from finmesh.platform.storage.idempotency import KeyedCall, validate_key

_CHANNELS = {pb.VERIFICATION_CHANNEL_SMS: "SMS", pb.VERIFICATION_CHANNEL_EMAIL: "EMAIL"}


def _sent(sent: verification.CodeSent) -> pb.StartVerificationResponse:
    return pb.StartVerificationResponse(
        verification_id=sent.verification_id, expires_at=convert.timestamp(sent.expires_at)
    )


class VerificationRpcs:
    deps: Deps

    async def StartVerification(
        self, request: pb.StartVerificationRequest, context: Context
    ) -> pb.StartVerificationResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if request.channel not in _CHANNELS:
            raise InvalidArgument(FieldViolation("channel", "SMS or EMAIL"))
        return await verification.start_verification(
            d,
            KeyedCall("StartVerification", request, pb.StartVerificationResponse, _sent),
            request.user_id,
            _CHANNELS[request.channel],
            deadline(context, d),
        )

    async def ConfirmVerification(
        self, request: pb.ConfirmVerificationRequest, context: Context
    ) -> pb.ConfirmVerificationResponse:
        d = self.deps
        validate_code_request(request.idempotency_key, request.verification_id, request.code, "verification_id")
        return await verification.confirm_verification(
            d,
            KeyedCall(
                "ConfirmVerification",
                d.fingerprinted(request, "code"),
                pb.ConfirmVerificationResponse,
                lambda user: pb.ConfirmVerificationResponse(user=convert.user(user)),
            ),
            request.verification_id,
            request.code,
            deadline(context, d),
        )

    async def CheckRealName(self, request: pb.CheckRealNameRequest, context: Context) -> pb.CheckRealNameResponse:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        return await verification.check_real_name(
            d,
            KeyedCall(
                "CheckRealName",
                request,
                pb.CheckRealNameResponse,
                lambda user: pb.CheckRealNameResponse(user=convert.user(user)),
            ),
            request.user_id,
            deadline(context, d),
        )
