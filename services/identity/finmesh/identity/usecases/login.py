"""Login: a password judged by the throttle (domain.login_throttle), then a second factor (an SMS code, or the
authenticator's when one is enabled) that CompleteLogin turns into tokens."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2.exceptions import InvalidHashError, VerificationError

from finmesh.identity.domain import login_throttle as throttle
from finmesh.identity.domain.otp import new_code
from finmesh.identity.store import login_attempts, mfa, users
from finmesh.identity.usecases import codes, tokens
from finmesh.identity.usecases.deps import Deadline, Deps
from finmesh.identity.usecases.mfa import check_login_code
from finmesh.platform.errors import DomainError, Unauthenticated
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")
_BAD_LOGIN = "wrong login or password"


class TooManyAttempts(Exception):
    """The throttle's answer to this address: `wait` seconds before the next attempt (not recorded)."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"retry in {wait:.3f} s")
        self.wait = wait


@dataclass(frozen=True)
class LoginChallenge:
    challenge_id: str
    totp: bool  # answered from the authenticator; else a code went by SMS (or, held, will if the password was right)


def address_key(d: Deps, address: str) -> str:
    """What is stored of a client address: a keyed hash, 64 bits of it (unlike a plain hash, not reversible
    by trying all 2**32 IPv4 addresses without the master key)."""
    return d.vault.mac("login-address", address)[:16]


async def login(
    d: Deps, call: KeyedCall[LoginChallenge, Reply], login_name: str, password: str, address: str, deadline: Deadline
) -> Reply:
    """Login from the client `address` (api.client_address): a challenge for the second factor, or
    BAD_CREDENTIALS; TooManyAttempts while the throttle makes this address wait."""
    prior = await call.replay(d.idem)
    if prior is not None:
        return prior
    now = d.now()
    attempt = await _start_attempt(d, login_name, address_key(d, address), now)
    # Counted as failed until the password is verified: guesses sent at once see each other.
    ok = await _password_ok(d, attempt.row, password)
    answered = d.now()
    if attempt.verdict.hold:
        return await _held_challenge(d, call, attempt, ok, answered)
    async with d.engine.begin() as conn:
        await login_attempts.settle(conn, attempt.attempt_id, throttle.PASSED if ok else throttle.FAILED, answered)
    if not ok:
        _log.info("login_refused", user_id=attempt.user_id)
        raise Unauthenticated("BAD_CREDENTIALS", _BAD_LOGIN)
    row = attempt.row
    challenge_id = str(uuid.uuid4())
    code = None
    if not attempt.totp_on:
        code = new_code()
        await codes.send(d, deadline, row, challenge_id, "SMS", users.reveal(d.vault, row, "phone"), code)

    async def op(conn: Any) -> LoginChallenge:
        await _add_challenge(d, conn, attempt, challenge_id, code, now, password_ok=None)
        return LoginChallenge(challenge_id, attempt.totp_on)

    reply = await call.commit(d.idem, op)
    _log.info("login_challenged", user_id=row.user_id, second_factor="TOTP" if attempt.totp_on else "SMS")
    return reply


async def complete(d: Deps, call: KeyedCall[tokens.Tokens, Reply], challenge_id: str, code: str, address: str) -> Reply:
    """CompleteLogin: the second factor, then (held under the throttle) the password's verdict, then tokens.
    The answer carries tokens: stored sealed."""
    prior = await call.replay(d.sealed)
    if prior is not None:
        return prior
    await codes.take_attempt(d, challenge_id)
    now = d.now()
    address = address_key(d, address)

    async def op(conn: Any) -> tokens.Tokens:
        challenge = await codes.get(conn, challenge_id, "LOGIN", unknown="unknown login challenge")
        row = await users.get_user(conn, challenge.user_id)
        known = row is not None and row.erased_at is None
        # The code first: a held verdict (below) is told only to whoever holds the second factor.
        if challenge.channel == "TOTP" and known:
            await check_login_code(d, conn, challenge, row, code, now)
        else:
            codes.check(d, challenge, code, now)
        if not known or challenge.password_ok is False:
            raise Unauthenticated("BAD_CREDENTIALS", _BAD_LOGIN)
        await codes.spend(conn, challenge.challenge_id, now)
        await login_attempts.record(conn, subject=row.user_id, address=address, outcome=throttle.COMPLETED, at=now)
        return await tokens.issue(d, conn, row, str(uuid.uuid4()), now)

    reply = await call.commit(d.sealed, op)
    _log.info("login_completed", challenge_id=challenge_id)
    return reply


async def _password_ok(d: Deps, row: Any, password: str) -> bool:
    known = row is not None and row.erased_at is None
    # Unknown logins are verified against a dummy hash: both failures take an argon2 verification's time.
    stored = row.password_hash if known else await d.dummy_hash()
    try:
        await asyncio.to_thread(d.hasher.verify, stored, password)
    except (VerificationError, InvalidHashError):
        return False
    return known


@dataclass(frozen=True)
class _Attempt:
    """A password attempt the throttle let through, recorded (as FAILED until its password is verified)."""

    row: Any  # the user whose login it is, or None
    subject: str  # the user id, or a keyed hash of a login no user has
    attempt_id: int
    verdict: throttle.Verdict
    totp_on: bool

    @property
    def user_id(self) -> str:
        return self.row.user_id if self.row is not None else ""


async def _start_attempt(d: Deps, login_name: str, address: str, now: datetime) -> _Attempt:
    """Judge this attempt by the history of its account and address; refuse it for now, or record it."""
    async with d.engine.connect() as conn:
        row = await users.find_by_login(conn, d.vault, login_name)
        # Logins no user has are throttled alike: the throttle must not tell which logins exist.
        subject = (
            row.user_id if row is not None else d.vault.mac("login-subject", users.normalized_login(login_name))[:32]
        )
        history = await login_attempts.history(
            conn,
            subject=subject,
            address=address,
            now=now,
            window=timedelta(seconds=d.settings.identity_login_window_seconds),
            known_for=timedelta(days=d.settings.identity_login_known_address_days),
        )
        totp_on = row is not None and await mfa.totp_enabled(conn, row.user_id)
    verdict = throttle.judge(history, d.login_policy, now)
    if verdict.wait > 0:
        # Not recorded and not logged one by one: refusals are what a flood is made of (the span has each).
        raise TooManyAttempts(verdict.wait)
    async with d.engine.begin() as conn:
        attempt_id = await login_attempts.record(
            conn, subject=subject, address=address, outcome=throttle.FAILED, at=now
        )
    if history.address_failures + 1 >= d.login_policy.free_failures:
        _log.info(
            "login_slowed",
            user_id=row.user_id if row is not None else "",
            next_wait_seconds=throttle.backoff(history.address_failures + 1, d.login_policy),
        )
    return _Attempt(row, subject, attempt_id, verdict, totp_on)


async def _add_challenge(
    d: Deps,
    conn: Any,
    attempt: _Attempt,
    challenge_id: str,
    code: str | None,
    now: datetime,
    *,
    password_ok: bool | None,
) -> None:
    await codes.add(
        conn,
        d,
        challenge_id=challenge_id,
        user_id=attempt.user_id,
        purpose="LOGIN",
        channel="TOTP" if attempt.totp_on else "SMS",
        code=code,
        now=now,
        password_ok=password_ok,
    )


async def _held_challenge(
    d: Deps, call: KeyedCall[LoginChallenge, Reply], attempt: _Attempt, ok: bool, now: datetime
) -> Reply:
    """Under the account's global throttle, from an address not the owner's: a challenge whatever the password,
    its verdict told by CompleteLogin once the second factor passes. Only a right password sends an SMS, and
    after the answer, so neither the answer nor its timing tells a guesser anything."""
    challenge_id = str(uuid.uuid4())
    code = new_code() if ok and not attempt.totp_on else None

    async def op(conn: Any) -> LoginChallenge:
        await login_attempts.settle(conn, attempt.attempt_id, throttle.HELD if ok else throttle.FAILED, now)
        await _add_challenge(d, conn, attempt, challenge_id, code, now, password_ok=ok)
        return LoginChallenge(challenge_id, attempt.totp_on)

    reply = await call.commit(d.idem, op)
    _log.info("login_verdict_held", user_id=attempt.user_id)
    if code is not None:
        _sending.add(task := asyncio.create_task(_send_held_code(d, attempt.row, challenge_id, code)))
        task.add_done_callback(_sending.discard)
    return reply


_sending: set[asyncio.Task[None]] = set()  # held codes on their way (a task must be referenced until done)


async def _send_held_code(d: Deps, row: Any, challenge_id: str, code: str) -> None:
    try:
        await codes.send(d, d.no_deadline, row, challenge_id, "SMS", users.reveal(d.vault, row, "phone"), code)
    except DomainError as error:
        _log.warning("login_code_not_sent", user_id=row.user_id, reason=error.reason)
