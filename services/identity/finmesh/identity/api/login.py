"""Login with password plus a second factor, refresh, revocation, and service tokens."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from argon2.exceptions import InvalidHashError, VerificationError

from finmesh.identity.api import convert
from finmesh.identity.api.client_address import address_key, client_address
from finmesh.identity.api.verification import deadline_of, validate_code_request
from finmesh.identity.domain import login_throttle as throttle
from finmesh.identity.domain import passwords, totp
from finmesh.identity.domain.claims import Subject, service_claims, user_claims
from finmesh.identity.domain.otp import new_code
from finmesh.identity.store import login_attempts, mfa, sessions, users
from finmesh.identity.store.times import utc
from finmesh.identity.usecases import codes
from finmesh.identity.usecases.deps import Deps, fully_verified
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.auth.context import require_owner
from finmesh.platform.auth.service_tokens import check_credential
from finmesh.platform.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    Unauthenticated,
    Validator,
)
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.rpc.ratelimit import RateLimited
from finmesh.platform.storage.idempotency import validate_key

_log = get_logger("finmesh.identity")
_BAD_LOGIN = "wrong login or password"


def subject_of(row: Any) -> Subject:
    return Subject(row.user_id, tuple(r for r in row.roles.split(",") if r), row.risk_tier, fully_verified(row))


async def issue_tokens(d: Deps, conn: Any, row: Any, family_id: str, now: datetime) -> pb.TokenPair:
    """A new access token and a new refresh token (one more link of the login's family)."""
    refresh_token = "rt_" + secrets.token_urlsafe(32)
    refresh_expires = now + timedelta(seconds=d.settings.identity_refresh_token_ttl_seconds)
    await sessions.add(conn, user_id=row.user_id, family_id=family_id, refresh_token=refresh_token, now=now,
                       expires_at=refresh_expires)
    claims = user_claims(subject_of(row), int(now.timestamp()), d.settings.identity_access_token_ttl_seconds)
    return pb.TokenPair(
        access_token=await d.keys.sign(claims),
        access_expires_at=convert.timestamp(datetime.fromtimestamp(claims["exp"], now.tzinfo)),  # type: ignore[arg-type]
        refresh_token=refresh_token,
        refresh_expires_at=convert.timestamp(refresh_expires),
    )


class LoginRpcs:
    deps: Deps

    async def Login(self, request: pb.LoginRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        v = Validator()
        v.require(0 < len(request.login) <= 254, "login", "phone (E.164) or e-mail")
        problem = passwords.problem_with_given(request.password)
        v.require(problem is None, "password", problem or "")
        v.raise_if_any()
        keyed = d.fingerprinted(request, "login", "password")
        prior = await d.idem.replay("Login", keyed, pb.LoginResponse)
        if prior is not None:
            return prior
        now = d.now()
        attempt = await _start_attempt(d, context, request.login, now)
        # Counted as failed until the password is verified: guesses sent at once see each other.
        ok = await self._password_ok(attempt.row, request.password)
        answered = d.now()
        if attempt.verdict.hold:
            return await _held_challenge(d, keyed, attempt, ok, answered)
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
            await codes.send(d, deadline_of(d, context), row, challenge_id, "SMS", users.reveal(d.vault, row, "phone"),
                             code)

        async def op(conn: Any) -> pb.LoginResponse:
            return await _add_challenge(d, conn, attempt, challenge_id, code, now, password_ok=None)

        reply = await d.idem.commit("Login", keyed, pb.LoginResponse, op)
        _log.info("login_challenged", user_id=row.user_id, second_factor="TOTP" if attempt.totp_on else "SMS")
        return reply

    async def _password_ok(self, row: Any, password: str) -> bool:
        known = row is not None and row.erased_at is None
        # Unknown logins are verified against a dummy hash: both failures take an argon2 verification's time.
        stored = row.password_hash if known else await self.deps.dummy_hash()
        try:
            await asyncio.to_thread(self.deps.hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return False
        return known

    async def CompleteLogin(self, request: pb.CompleteLoginRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_code_request(request.idempotency_key, request.challenge_id, request.code, "challenge_id")
        keyed = d.fingerprinted(request, "code")
        prior = await d.sealed.replay("CompleteLogin", keyed, pb.CompleteLoginResponse)
        if prior is not None:
            return prior
        await codes.take_attempt(d, request.challenge_id)
        now = d.now()
        address = address_key(d.vault, client_address(context, d.trusted_proxies))

        async def op(conn: Any) -> pb.CompleteLoginResponse:
            challenge = await codes.get(conn, request.challenge_id, "LOGIN", unknown="unknown login challenge")
            row = await users.get_user(conn, challenge.user_id)
            known = row is not None and row.erased_at is None
            # The code first: a held verdict (below) is told only to whoever holds the second factor.
            if challenge.channel == "TOTP" and known:
                await _check_totp(d, conn, challenge, row, request.code, now)
            else:
                codes.check(d, challenge, request.code, now)
            if not known or challenge.password_ok is False:
                raise Unauthenticated("BAD_CREDENTIALS", _BAD_LOGIN)
            await codes.spend(conn, challenge.challenge_id, now)
            await login_attempts.record(conn, subject=row.user_id, address=address, outcome=throttle.COMPLETED,
                                        at=now)
            return pb.CompleteLoginResponse(tokens=await issue_tokens(d, conn, row, str(uuid.uuid4()), now))

        reply = await d.sealed.commit("CompleteLogin", keyed, pb.CompleteLoginResponse, op)
        _log.info("login_completed", challenge_id=request.challenge_id)
        return reply

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        if not 0 < len(request.refresh_token) <= 200:
            raise InvalidArgument(FieldViolation("refresh_token", "required"))
        keyed = d.fingerprinted(request, "refresh_token")
        prior = await d.sealed.replay("RefreshToken", keyed, pb.RefreshTokenResponse)
        if prior is not None:
            return prior
        now = d.now()
        async with d.engine.begin() as conn:
            session = await sessions.find(conn, request.refresh_token)
            if session is not None and session.used_at is not None and session.revoked_at is None:
                # A spent token presented again: it was stolen (or the client is broken). End the whole login.
                await sessions.revoke_family(conn, session.family_id, now)
                _log.warning("refresh_token_reused", user_id=session.user_id)
                reused = True
            else:
                reused = False
        if reused:
            raise Unauthenticated("TOKEN_INVALID", "refresh token already used; log in again")

        async def op(conn: Any) -> pb.RefreshTokenResponse:
            session = await sessions.find(conn, request.refresh_token)
            if session is None or session.revoked_at is not None or session.used_at is not None:
                raise Unauthenticated("TOKEN_INVALID", "unknown or revoked refresh token")
            if utc(session.expires_at) <= now:
                raise Unauthenticated("TOKEN_EXPIRED", "refresh token expired; log in again")
            row = await users.get_user(conn, session.user_id)
            if row is None or row.erased_at is not None:
                raise Unauthenticated("TOKEN_INVALID", "the user no longer exists")
            if not await sessions.spend(conn, session.session_id, now):
                raise Unauthenticated("TOKEN_INVALID", "refresh token already used; log in again")
            # Fresh claims: role, tier and verification changes reach the new access token.
            return pb.RefreshTokenResponse(tokens=await issue_tokens(d, conn, row, session.family_id, now))

        return await d.sealed.commit("RefreshToken", keyed, pb.RefreshTokenResponse, op)

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        validate_key(request.idempotency_key)
        if bool(request.refresh_token) == bool(request.user_id):
            raise InvalidArgument([FieldViolation("refresh_token", "give a refresh token or a user id"),
                                   FieldViolation("user_id", "give a refresh token or a user id")])
        if len(request.refresh_token) > 200 or len(request.user_id) > 36:
            raise InvalidArgument(FieldViolation("refresh_token" if request.refresh_token else "user_id", "too long"))
        keyed = d.fingerprinted(request, "refresh_token")
        prior = await d.idem.replay("RevokeToken", keyed, pb.RevokeTokenResponse)
        if prior is not None:
            return prior
        now = d.now()

        async def op(conn: Any) -> pb.RevokeTokenResponse:
            if request.user_id:
                require_owner(request.user_id, "sessions")
                return pb.RevokeTokenResponse(revoked_sessions=await sessions.revoke_user(conn, request.user_id, now))
            session = await sessions.find(conn, request.refresh_token)
            if session is None:
                return pb.RevokeTokenResponse(revoked_sessions=0)
            require_owner(session.user_id, "sessions")
            revoked = await sessions.revoke_family(conn, session.family_id, now)
            return pb.RevokeTokenResponse(revoked_sessions=1 if revoked else 0)

        reply = await d.idem.commit("RevokeToken", keyed, pb.RevokeTokenResponse, op)
        _log.info("sessions_revoked", count=reply.revoked_sessions)
        return reply

    async def GetServiceToken(self, request: pb.GetServiceTokenRequest, context: grpc.aio.ServicerContext) -> Any:
        d = self.deps
        v = Validator()
        v.require(0 < len(request.service) <= 40, "service", "required")
        v.require(0 < len(request.credential) <= 200, "credential", "required")
        v.raise_if_any()
        if not check_credential(d.mesh_secret, request.service, request.credential):
            # The name comes from an unauthenticated caller: escape what a terminal would not show as is.
            shown = request.service if request.service.isprintable() else ascii(request.service)
            _log.warning("service_token_refused", service=shown)
            raise Unauthenticated("BAD_CREDENTIALS", "unknown service or wrong credential")
        now = int(d.clock())
        claims = service_claims(request.service, now, d.settings.identity_service_token_ttl_seconds)
        expires = convert.timestamp(datetime.fromtimestamp(claims["exp"], d.now().tzinfo))  # type: ignore[arg-type]
        return pb.GetServiceTokenResponse(access_token=await d.keys.sign(claims), expires_at=expires)


@dataclass(frozen=True)
class Attempt:
    """A password attempt the throttle let through, recorded (as FAILED until its password is verified)."""

    row: Any  # the user whose login it is, or None
    subject: str  # the user id, or a keyed hash of a login no user has
    attempt_id: int
    verdict: throttle.Verdict
    totp_on: bool

    @property
    def user_id(self) -> str:
        return self.row.user_id if self.row is not None else ""


async def _start_attempt(d: Deps, context: grpc.aio.ServicerContext, login: str, now: datetime) -> Attempt:
    """Judge this attempt by the history of its account and address; refuse it for now, or record it."""
    address = address_key(d.vault, client_address(context, d.trusted_proxies))
    async with d.engine.connect() as conn:
        row = await users.find_by_login(conn, d.vault, login)
        # Logins no user has are throttled alike: the throttle must not tell which logins exist.
        subject = row.user_id if row is not None else d.vault.mac("login-subject", users.normalized_login(login))[:32]
        history = await login_attempts.history(
            conn, subject=subject, address=address, now=now,
            window=timedelta(seconds=d.settings.identity_login_window_seconds),
            known_for=timedelta(days=d.settings.identity_login_known_address_days))
        totp_on = row is not None and await mfa.totp_enabled(conn, row.user_id)
    verdict = throttle.judge(history, d.login_policy, now)
    if verdict.wait > 0:
        # Not recorded and not logged one by one: refusals are what a flood is made of (the span has each).
        raise RateLimited(verdict.wait, "TOO_MANY_ATTEMPTS", "too many failed logins from here; retry later")
    async with d.engine.begin() as conn:
        attempt_id = await login_attempts.record(conn, subject=subject, address=address, outcome=throttle.FAILED,
                                                 at=now)
    if history.address_failures + 1 >= d.login_policy.free_failures:
        _log.info("login_slowed", user_id=row.user_id if row is not None else "",
                  next_wait_seconds=throttle.backoff(history.address_failures + 1, d.login_policy))
    return Attempt(row, subject, attempt_id, verdict, totp_on)


async def _add_challenge(d: Deps, conn: Any, attempt: Attempt, challenge_id: str, code: str | None, now: datetime,
                         *, password_ok: bool | None) -> pb.LoginResponse:
    await codes.add(conn, d, challenge_id=challenge_id, user_id=attempt.user_id, purpose="LOGIN",
                    channel="TOTP" if attempt.totp_on else "SMS", code=code, now=now, password_ok=password_ok)
    return pb.LoginResponse(
        challenge_id=challenge_id, totp_accepted=attempt.totp_on,
        challenge_channel=pb.VERIFICATION_CHANNEL_UNSPECIFIED if attempt.totp_on else pb.VERIFICATION_CHANNEL_SMS)


async def _held_challenge(d: Deps, keyed: Any, attempt: Attempt, ok: bool, now: datetime) -> pb.LoginResponse:
    """Under the account's global throttle, from an address not the owner's: a challenge whatever the password,
    its verdict told by CompleteLogin once the second factor passes. Only a right password sends an SMS, and
    after the answer, so neither the answer nor its timing tells a guesser anything."""
    challenge_id = str(uuid.uuid4())
    code = new_code() if ok and not attempt.totp_on else None

    async def op(conn: Any) -> pb.LoginResponse:
        await login_attempts.settle(conn, attempt.attempt_id, throttle.HELD if ok else throttle.FAILED, now)
        return await _add_challenge(d, conn, attempt, challenge_id, code, now, password_ok=ok)

    reply = await d.idem.commit("Login", keyed, pb.LoginResponse, op)
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


async def _check_totp(d: Deps, conn: Any, challenge: Any, row: Any, code: str, now: datetime) -> None:
    codes.check_live(d, challenge, now)
    enrolment = await mfa.get_totp(conn, row.user_id)
    if enrolment is None or not enrolment.enabled:
        raise FailedPrecondition("CODE_INVALID", "no authenticator enrolled")
    secret = totp_secret(d, row, enrolment)
    step = totp.matching_step(secret, code, d.clock(), enrolment.last_step)
    if step is None or not await mfa.accept_step(conn, row.user_id, step):
        raise FailedPrecondition("CODE_INVALID", "wrong or already used authenticator code")


def totp_secret(d: Deps, row: Any, enrolment: Any) -> bytes:
    encoded = d.vault.decrypt(row.wrapped_key, row.user_id, "totp_secret", enrolment.secret_enc)
    return base64.b32decode(encoded)
