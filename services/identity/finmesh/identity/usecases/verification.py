"""Onboarding steps two and three: a one-time code to the phone or e-mail, and the real-name registry check."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from finmesh.identity.clients.registry import RegistryUnavailable
from finmesh.identity.domain.onboarding import completes_onboarding
from finmesh.identity.domain.otp import new_code
from finmesh.identity.store import challenges, mfa, users
from finmesh.identity.usecases import codes, onboarding
from finmesh.identity.usecases.deps import Deadline, Deps
from finmesh.identity.usecases.users import UserView, load_user, view
from finmesh.platform.errors import FailedPrecondition, ResourceExhausted, Unavailable
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")
# Where each channel's code goes.
_ADDRESS_FIELD = {"SMS": "phone", "EMAIL": "email"}


@dataclass(frozen=True)
class CodeSent:
    verification_id: str
    expires_at: datetime


async def start_verification(
    d: Deps, call: KeyedCall[CodeSent, Reply], user_id: str, channel: str, deadline: Deadline
) -> Reply:
    """A code to the user's phone (SMS) or e-mail (EMAIL)."""
    prior = await call.replay(d.idem)
    if prior is not None:
        return prior
    now = d.now()
    async with d.engine.connect() as conn:
        row = await load_user(conn, user_id)
        recent = await challenges.count_since(conn, row.user_id, "CONTACT", now - timedelta(hours=1))
    if row.contact_check == "PASSED":
        raise FailedPrecondition("INVALID_STATE", "the contact is already verified")
    if recent >= d.settings.identity_codes_per_hour:
        raise ResourceExhausted("RATE_LIMITED", "too many codes requested; try again later")
    challenge_id, code = str(uuid.uuid4()), new_code()
    # Send first, store after: a failed send leaves nothing behind and the same key can be retried.
    await codes.send(d, deadline, row, challenge_id, channel, users.reveal(d.vault, row, _ADDRESS_FIELD[channel]), code)

    async def op(conn: Any) -> CodeSent:
        return CodeSent(
            challenge_id,
            await codes.add(
                conn,
                d,
                challenge_id=challenge_id,
                user_id=row.user_id,
                purpose="CONTACT",
                channel=channel,
                code=code,
                now=now,
            ),
        )

    reply = await call.commit(d.idem, op)
    _log.info("verification_started", user_id=row.user_id, channel=channel)
    return reply


async def confirm_verification(
    d: Deps, call: KeyedCall[UserView, Reply], verification_id: str, code: str, deadline: Deadline
) -> Reply:
    prior = await call.replay(d.idem)
    if prior is not None:
        return prior
    await codes.take_attempt(d, verification_id)
    now = d.now()
    last_step, tier = await _contact_tier(d, verification_id, code, now, deadline)
    user_id = ""

    async def op(conn: Any) -> UserView:
        nonlocal user_id
        row = await codes.get(conn, verification_id, "CONTACT", unknown="unknown verification")
        user_id = row.user_id
        codes.check(d, row, code, now)
        await codes.spend(conn, row.challenge_id, now)
        await load_user(conn, row.user_id)
        await users.set_check(conn, row.user_id, "contact", "PASSED")
        user = await onboarding.record_verified(conn, await users.get_user(conn, row.user_id), tier)
        return view(user, totp_enabled=await mfa.totp_enabled(conn, row.user_id))

    # A concurrent call with the same key may answer instead: same request, so the same challenge and user.
    reply = await call.commit(d.idem, op)
    d.on_commit()
    _log.info("contact_verified", user_id=user_id)
    if not last_step:
        await onboarding.assess_if_ready(d, user_id, deadline)
    return reply


async def _contact_tier(
    d: Deps, verification_id: str, code: str, now: datetime, deadline: Deadline
) -> tuple[bool, str]:
    """Whether this confirmation is the user's last onboarding step, and if so risk's tier for them.
    Risk is asked only for a code that will pass: a wrong guess costs no assessment."""
    async with d.engine.connect() as conn:
        challenge = await codes.find(conn, verification_id, "CONTACT")
        if challenge is None:
            return False, ""
        user = await users.get_user(conn, challenge.user_id)
    if user is None or not completes_onboarding(user, "contact"):
        return False, ""
    if not codes.passes(d, challenge, code, now):
        return True, ""
    return True, await onboarding.tier_for_last_step(d, user, "contact", deadline)


async def check_real_name(d: Deps, call: KeyedCall[UserView, Reply], user_id: str, deadline: Deadline) -> Reply:
    """Ask the registry whether it holds the user's legal name for their identity number (once passed, never
    again)."""
    prior = await call.replay(d.idem)
    if prior is not None:
        return prior
    async with d.engine.connect() as conn:
        row = await load_user(conn, user_id)
    matched = True
    if row.real_name_check != "PASSED":
        try:
            match = await d.registry.check(
                users.reveal(d.vault, row, "legal_name"), users.reveal(d.vault, row, "id_number")
            )
        except RegistryUnavailable:
            raise Unavailable("REGISTRY_UNAVAILABLE", "the identity registry did not answer; retry") from None
        matched = match.matched
        if not matched:
            # Recorded apart from the refusal (whose transaction rolls back): the user sees FAILED.
            async with d.engine.begin() as conn:
                await users.set_check(conn, row.user_id, "real_name", "FAILED")

    last_step = matched and completes_onboarding(row, "real_name")
    tier = await onboarding.tier_for_last_step(d, row, "real_name", deadline) if last_step else ""

    async def op(conn: Any) -> UserView:
        if not matched:
            raise FailedPrecondition("REAL_NAME_MISMATCH", "the registry does not hold this name for this number")
        await users.set_check(conn, row.user_id, "real_name", "PASSED")
        user = await onboarding.record_verified(conn, await users.get_user(conn, row.user_id), tier)
        return view(user, totp_enabled=await mfa.totp_enabled(conn, row.user_id))

    try:
        reply = await call.commit(d.idem, op)
    finally:
        _log.info("real_name_checked", user_id=row.user_id, matched=matched)
    d.on_commit()
    if not last_step:
        await onboarding.assess_if_ready(d, row.user_id, deadline)
    return reply
