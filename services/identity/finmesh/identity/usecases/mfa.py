"""TOTP (RFC 6238) as the second factor: a 160-bit secret sealed with the user's data key, enabled by a first
code, and each time step accepted once."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain import totp
from finmesh.identity.store import mfa, users
from finmesh.identity.usecases import codes
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.users import UserView, load_user, view
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")


def totp_secret(d: Deps, row: Any, enrolment: Any) -> bytes:
    encoded = d.vault.decrypt(row.wrapped_key, row.user_id, "totp_secret", enrolment.secret_enc)
    return base64.b32decode(encoded)


async def enroll(d: Deps, call: KeyedCall[str, Reply], user_id: str) -> Reply:
    """EnrollTotp: a new secret, not enabled until confirmed; the answer gets its otpauth:// URI."""
    # The answer carries the secret: stored sealed, so a replay shows the same secret and nothing else can.
    prior = await call.replay(d.sealed)
    if prior is not None:
        return prior

    async def op(conn: Any) -> str:
        row = await load_user(conn, user_id)
        if await mfa.totp_enabled(conn, row.user_id):
            raise FailedPrecondition("INVALID_STATE", "an authenticator is already enrolled")
        secret = totp.new_secret()
        sealed = d.vault.encrypt(row.wrapped_key, row.user_id, "totp_secret", base64.b32encode(secret).decode())
        await mfa.put_totp(conn, row.user_id, sealed)
        return totp.provisioning_uri(secret, row.user_id)

    reply = await call.commit(d.sealed, op)
    _log.info("totp_enrolment_started", user_id=user_id)
    return reply


async def confirm(d: Deps, call: KeyedCall[UserView, Reply], user_id: str, code: str) -> Reply:
    """ConfirmTotp: the enrolment's first code enables it."""
    prior = await call.replay(d.idem)
    if prior is not None:
        return prior

    async def op(conn: Any) -> UserView:
        row = await load_user(conn, user_id)
        enrolment = await mfa.get_totp(conn, row.user_id)
        if enrolment is None or enrolment.enabled:
            raise FailedPrecondition("INVALID_STATE", "no authenticator enrolment to confirm")
        step = totp.matching_step(totp_secret(d, row, enrolment), code, d.clock(), enrolment.last_step)
        if step is None or not await mfa.accept_step(conn, row.user_id, step, enable=True):
            raise FailedPrecondition("CODE_INVALID", "wrong authenticator code")
        return view(await users.get_user(conn, row.user_id), totp_enabled=True)

    reply = await call.commit(d.idem, op)
    _log.info("totp_enabled", user_id=user_id)
    return reply


async def check_login_code(d: Deps, conn: AsyncConnection, challenge: Any, row: Any, code: str, now: datetime) -> None:
    """A login challenge answered from the authenticator: the challenge live (codes.check_live), then the code
    of a time step within the window and newer than the last one accepted."""
    codes.check_live(d, challenge, now)
    enrolment = await mfa.get_totp(conn, row.user_id)
    if enrolment is None or not enrolment.enabled:
        raise FailedPrecondition("CODE_INVALID", "no authenticator enrolled")
    step = totp.matching_step(totp_secret(d, row, enrolment), code, d.clock(), enrolment.last_step)
    if step is None or not await mfa.accept_step(conn, row.user_id, step):
        raise FailedPrecondition("CODE_INVALID", "wrong or already used authenticator code")
