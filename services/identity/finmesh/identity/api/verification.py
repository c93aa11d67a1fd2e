"""Onboarding steps two and three: a one-time code through notify, and the real-name registry check."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc

from finmesh.identity.api import convert
from finmesh.identity.api.registration import require_user_id
from finmesh.identity.clients.registry import RegistryUnavailable
from finmesh.identity.domain.otp import new_code, well_formed
from finmesh.identity.store import challenges, mfa, users
from finmesh.identity.usecases import codes, onboarding
from finmesh.identity.usecases.deps import Deadline, Deps, load_user
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    Validator,
)
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.rpc.channels import remaining_timeout
from finmesh.platform.storage.idempotency import validate_key

_log = get_logger("finmesh.identity")
_CHANNELS = {pb.VERIFICATION_CHANNEL_SMS: ("SMS", "phone"), pb.VERIFICATION_CHANNEL_EMAIL: ("EMAIL", "email")}


def validate_code_request(key: str, challenge_id: str, code: str, id_field: str) -> None:
    validate_key(key)
    v = Validator()
    v.require(0 < len(challenge_id) <= 36, id_field, "required")
    v.require(well_formed(code), "code", "six digits")
    v.raise_if_any()


class VerificationRpcs:
    deps: Deps

    async def StartVerification(self, request: pb.StartVerificationRequest,
                                context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        if request.channel not in _CHANNELS:
            raise InvalidArgument(FieldViolation("channel", "SMS or EMAIL"))
        channel, field = _CHANNELS[request.channel]
        prior = await d.idem.replay("StartVerification", request, pb.StartVerificationResponse)
        if prior is not None:
            return prior
        now = d.now()
        async with d.engine.connect() as conn:
            row = await load_user(conn, request.user_id)
            recent = await challenges.count_since(conn, row.user_id, "CONTACT", now - timedelta(hours=1))
        if row.contact_check == "PASSED":
            raise FailedPrecondition("INVALID_STATE", "the contact is already verified")
        if recent >= d.settings.identity_codes_per_hour:
            raise ResourceExhausted("RATE_LIMITED", "too many codes requested; try again later")
        challenge_id, code = str(uuid.uuid4()), new_code()
        # Send first, store after: a failed send leaves nothing behind and the same key can be retried.
        await codes.send(d, deadline_of(d, context), row, challenge_id, channel, users.reveal(d.vault, row, field),
                         code)

        async def op(conn: Any) -> pb.StartVerificationResponse:
            expires_at = await codes.add(conn, d, challenge_id=challenge_id, user_id=row.user_id, purpose="CONTACT",
                                         channel=channel, code=code, now=now)
            return pb.StartVerificationResponse(verification_id=challenge_id,
                                                expires_at=convert.timestamp(expires_at))

        reply = await d.idem.commit("StartVerification", request, pb.StartVerificationResponse, op)
        _log.info("verification_started", user_id=row.user_id, channel=channel)
        return reply

    async def ConfirmVerification(self, request: pb.ConfirmVerificationRequest,
                                  context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_code_request(request.idempotency_key, request.verification_id, request.code, "verification_id")
        keyed = d.fingerprinted(request, "code")
        prior = await d.idem.replay("ConfirmVerification", keyed, pb.ConfirmVerificationResponse)
        if prior is not None:
            return prior
        await codes.take_attempt(d, request.verification_id)
        now = d.now()
        last_step, tier = await _contact_tier(d, request, now, context)

        async def op(conn: Any) -> pb.ConfirmVerificationResponse:
            row = await codes.get(conn, request.verification_id, "CONTACT", unknown="unknown verification")
            codes.check(d, row, request.code, now)
            await codes.spend(conn, row.challenge_id, now)
            await load_user(conn, row.user_id)
            await users.set_check(conn, row.user_id, "contact", "PASSED")
            user = await onboarding.record_verified(conn, await users.get_user(conn, row.user_id), tier)
            return pb.ConfirmVerificationResponse(
                user=convert.user(user, totp_enabled=await mfa.totp_enabled(conn, row.user_id)))

        reply = await d.idem.commit("ConfirmVerification", keyed, pb.ConfirmVerificationResponse, op)
        d.on_commit()
        _log.info("contact_verified", user_id=reply.user.user_id)
        if not last_step:
            await onboarding.assess_if_ready(d, reply.user.user_id, context)
        return reply

    async def CheckRealName(self, request: pb.CheckRealNameRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        require_user_id(request.user_id)
        prior = await d.idem.replay("CheckRealName", request, pb.CheckRealNameResponse)
        if prior is not None:
            return prior
        async with d.engine.connect() as conn:
            row = await load_user(conn, request.user_id)
        matched = True
        if row.real_name_check != "PASSED":
            try:
                match = await d.registry.check(users.reveal(d.vault, row, "legal_name"),
                                               users.reveal(d.vault, row, "id_number"))
            except RegistryUnavailable:
                raise Unavailable("REGISTRY_UNAVAILABLE", "the identity registry did not answer; retry") from None
            matched = match.matched
            if not matched:
                # Recorded apart from the refusal (whose transaction rolls back): the user sees FAILED.
                async with d.engine.begin() as conn:
                    await users.set_check(conn, row.user_id, "real_name", "FAILED")

        last_step = matched and onboarding.completes_onboarding(row, "real_name")
        tier = await onboarding.tier_for_last_step(d, row, "real_name", context) if last_step else ""

        async def op(conn: Any) -> pb.CheckRealNameResponse:
            if not matched:
                raise FailedPrecondition("REAL_NAME_MISMATCH", "the registry does not hold this name for this number")
            await users.set_check(conn, row.user_id, "real_name", "PASSED")
            user = await onboarding.record_verified(conn, await users.get_user(conn, row.user_id), tier)
            return pb.CheckRealNameResponse(
                user=convert.user(user, totp_enabled=await mfa.totp_enabled(conn, row.user_id)))

        try:
            reply = await d.idem.commit("CheckRealName", request, pb.CheckRealNameResponse, op)
        finally:
            _log.info("real_name_checked", user_id=row.user_id, matched=matched)
        d.on_commit()
        if not last_step:
            await onboarding.assess_if_ready(d, reply.user.user_id, context)
        return reply


async def _contact_tier(d: Deps, request: pb.ConfirmVerificationRequest, now: Any,
                        context: grpc.aio.ServicerContext) -> tuple[bool, str]:
    """Whether this confirmation is the user's last onboarding step, and if so risk's tier for them.
    Risk is asked only for a code that will pass: a wrong guess costs no assessment."""
    async with d.engine.connect() as conn:
        challenge = await codes.find(conn, request.verification_id, "CONTACT")
        if challenge is None:
            return False, ""
        user = await users.get_user(conn, challenge.user_id)
    if user is None or not onboarding.completes_onboarding(user, "contact"):
        return False, ""
    if not codes.passes(d, challenge, request.code, now):
        return True, ""
    return True, await onboarding.tier_for_last_step(d, user, "contact", context)


def deadline_of(d: Deps, context: grpc.aio.ServicerContext | None) -> Deadline:
    """The caller's remaining time for a call to another service, read when the call is made."""
    return lambda: remaining_timeout(context, d.settings.call_timeout_seconds)
