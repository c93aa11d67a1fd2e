"""Onboarding steps two and three: a one-time code through notify, and the real-name registry check."""

from __future__ import annotations

import hmac
import uuid
from datetime import timedelta
from typing import Any

import grpc

from finmesh.identity.api import convert
from finmesh.identity.api.deps import Deps, load_user
from finmesh.identity.api.registration import require_user_id
from finmesh.identity.clients.registry import RegistryUnavailable
from finmesh.identity.domain.otp import ChallengeState, check_live, new_code, well_formed
from finmesh.identity.store import challenges, mfa, users
from finmesh.identity.store.times import utc
from finmesh.identity.usecases import onboarding
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


def code_hash(d: Deps, challenge_id: str, code: str) -> str:
    # Keyed by a master-derived key: a stolen table does not give the codes away by brute force.
    return d.vault.mac("one-time-code", f"{challenge_id}:{code}")


def code_matches(d: Deps, row: Any, code: str, now: Any) -> bool:
    """Whether check_code would pass, without refusing."""
    try:
        check_code(d, row, code, now)
    except FailedPrecondition:
        return False
    return True


def check_code(d: Deps, row: Any, code: str, now: Any) -> None:
    """Live, unspent, within attempts, and the right code; else the matching refusal."""
    check_live(ChallengeState(utc(row.expires_at), row.attempts, row.used_at is not None), now,
               d.settings.identity_code_max_attempts)
    if row.code_hash is None or not hmac.compare_digest(row.code_hash, code_hash(d, row.challenge_id, code)):
        raise FailedPrecondition("CODE_INVALID", "wrong code")


async def take_attempt(d: Deps, challenge_id: str) -> None:
    """Count the attempt in its own transaction, so a wrong code costs one even though its answer rolls back."""
    async with d.engine.begin() as conn:
        await challenges.take_attempt(conn, challenge_id)


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
        expires_at = now + timedelta(seconds=d.settings.identity_code_ttl_seconds)
        # Send first, store after: a failed send leaves nothing behind and the same key can be retried.
        await send_code(d, context, row, challenge_id, channel, users.reveal(d.vault, row, field), code)

        async def op(conn: Any) -> pb.StartVerificationResponse:
            await challenges.add(conn, challenge_id=challenge_id, user_id=row.user_id, purpose="CONTACT",
                                 channel=channel, code_hash=code_hash(d, challenge_id, code), now=now,
                                 expires_at=expires_at)
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
        await take_attempt(d, request.verification_id)
        now = d.now()
        last_step, tier = await _contact_tier(d, request, now, context)

        async def op(conn: Any) -> pb.ConfirmVerificationResponse:
            row = await challenges.get(conn, request.verification_id)
            if row is None or row.purpose != "CONTACT":
                raise FailedPrecondition("CODE_INVALID", "unknown verification")
            check_code(d, row, request.code, now)
            if not await challenges.use(conn, row.challenge_id, now):
                raise FailedPrecondition("CODE_INVALID", "this code was already used")
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
        challenge = await challenges.get(conn, request.verification_id)
        if challenge is None or challenge.purpose != "CONTACT":
            return False, ""
        user = await users.get_user(conn, challenge.user_id)
    if user is None or not onboarding.completes_onboarding(user, "contact"):
        return False, ""
    if not code_matches(d, challenge, request.code, now):
        return True, ""
    return True, await onboarding.tier_for_last_step(d, user, "contact", context)


async def send_code(d: Deps, context: grpc.aio.ServicerContext, row: Any, challenge_id: str, channel: str,
                    address: str, code: str) -> None:
    if d.notify is None:
        raise Unavailable("CHANNEL_UNAVAILABLE", "no notify target configured: codes cannot be sent")
    await d.notify.send_code(challenge_id=challenge_id, user_id=row.user_id, channel=channel, address=address,
                             code=code, minutes=max(d.settings.identity_code_ttl_seconds // 60, 1),
                             locale=row.locale, timeout=remaining_timeout(context, d.settings.call_timeout_seconds))
