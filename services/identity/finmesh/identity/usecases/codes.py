"""One-time codes as identity keeps them, for contact verification and login's second factor alike: a
challenge per code sent, holding a keyed hash of the code; each attempt counted in a transaction of its own
before the code is checked (domain.otp), so a wrong guess costs one even though its refusal rolls back."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain import otp
from finmesh.identity.domain.vault import Vault
from finmesh.identity.store import challenges
from finmesh.identity.usecases.deps import Deadline, Deps
from finmesh.platform.errors import FailedPrecondition, Unavailable
from finmesh.platform.storage.db import aware


def code_hash(vault: Vault, challenge_id: str, code: str) -> str:
    # Keyed by a master-derived key: a stolen table does not give the codes away by brute force.
    return vault.mac("one-time-code", f"{challenge_id}:{code}")


async def add(
    conn: AsyncConnection,
    d: Deps,
    *,
    challenge_id: str,
    user_id: str,
    purpose: str,
    channel: str,
    code: str | None,
    now: datetime,
    password_ok: bool | None = None,
) -> datetime:
    """A new challenge for `code` (None: no code was sent, e.g. TOTP); returns when it expires."""
    expires_at = now + timedelta(seconds=d.settings.identity_code_ttl_seconds)
    await challenges.add(
        conn,
        challenge_id=challenge_id,
        user_id=user_id,
        purpose=purpose,
        channel=channel,
        code_hash=code_hash(d.vault, challenge_id, code) if code else None,
        now=now,
        expires_at=expires_at,
        password_ok=password_ok,
    )
    return expires_at


async def send(d: Deps, deadline: Deadline, row: Any, challenge_id: str, channel: str, address: str, code: str) -> None:
    """Through notify, before the challenge is stored: a failed send leaves nothing behind."""
    if d.notify is None:
        raise Unavailable("CHANNEL_UNAVAILABLE", "no notify target configured: codes cannot be sent")
    await d.notify.send_code(
        challenge_id=challenge_id,
        user_id=row.user_id,
        channel=channel,
        address=address,
        code=code,
        minutes=max(d.settings.identity_code_ttl_seconds // 60, 1),
        locale=row.locale,
        timeout=deadline(),
    )


async def take_attempt(d: Deps, challenge_id: str) -> None:
    """Count the attempt in its own transaction, so a wrong code costs one even though its answer rolls back."""
    async with d.engine.begin() as conn:
        await challenges.take_attempt(conn, challenge_id)


async def find(conn: AsyncConnection, challenge_id: str, purpose: str) -> Any:
    """The challenge if it exists and is for `purpose` (CONTACT or LOGIN), else None."""
    row = await challenges.get(conn, challenge_id)
    return row if row is not None and row.purpose == purpose else None


async def get(conn: AsyncConnection, challenge_id: str, purpose: str, *, unknown: str) -> Any:
    """As find(), refusing a missing challenge (CODE_INVALID, with the words `unknown`)."""
    row = await find(conn, challenge_id, purpose)
    if row is None:
        raise FailedPrecondition("CODE_INVALID", unknown)
    return row


def _state(row: Any) -> otp.ChallengeState:
    return otp.ChallengeState(aware(row.expires_at), row.attempts, row.used_at is not None, row.code_hash)


def check_live(d: Deps, row: Any, now: datetime) -> None:
    """The challenge is unspent, unexpired and not over-tried (an authenticator's code is checked apart)."""
    otp.check_live(_state(row), now, d.settings.identity_code_max_attempts)


def check(d: Deps, row: Any, code: str, now: datetime) -> None:
    """The one check of a sent code: live, and the code the one sent; else the refusal."""
    otp.check_code(_state(row), code_hash(d.vault, row.challenge_id, code), now, d.settings.identity_code_max_attempts)


def passes(d: Deps, row: Any, code: str, now: datetime) -> bool:
    """Whether check() would pass, without refusing (nor counting an attempt)."""
    return otp.code_passes(
        _state(row), code_hash(d.vault, row.challenge_id, code), now, d.settings.identity_code_max_attempts
    )


async def spend(conn: AsyncConnection, challenge_id: str, now: datetime) -> None:
    """Single use: refused if a concurrent attempt spent the challenge first."""
    if not await challenges.use(conn, challenge_id, now):
        raise FailedPrecondition("CODE_INVALID", "this code was already used")
