"""Tokens: a login's access and refresh tokens (refresh spends the old refresh token; a spent one shown again
ends the whole login), their revocation, and service tokens for the mesh's services and identity itself."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain.claims import Subject, service_claims, user_claims
from finmesh.identity.domain.onboarding import fully_verified
from finmesh.identity.store import sessions, users
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.keys import KeyRing
from finmesh.identity.usecases.users import roles_of
from finmesh.platform.auth.context import require_owner
from finmesh.platform.auth.service_tokens import check_credential
from finmesh.platform.errors import Unauthenticated
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import aware
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")


@dataclass(frozen=True)
class Tokens:
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


@dataclass(frozen=True)
class ServiceToken:
    access_token: str
    expires_at: datetime


def subject_of(row: Any) -> Subject:
    return Subject(row.user_id, tuple(roles_of(row)), row.risk_tier, fully_verified(row))


async def issue(d: Deps, conn: AsyncConnection, row: Any, family_id: str, now: datetime) -> Tokens:
    """A new access token and a new refresh token (one more link of the login's family)."""
    refresh_token = "rt_" + secrets.token_urlsafe(32)
    refresh_expires = now + timedelta(seconds=d.settings.identity_refresh_token_ttl_seconds)
    await sessions.add(
        conn, user_id=row.user_id, family_id=family_id, refresh_token=refresh_token, now=now, expires_at=refresh_expires
    )
    claims = user_claims(subject_of(row), int(now.timestamp()), d.settings.identity_access_token_ttl_seconds)
    return Tokens(
        access_token=await d.keys.sign(claims),
        access_expires_at=datetime.fromtimestamp(claims["exp"], now.tzinfo),
        refresh_token=refresh_token,
        refresh_expires_at=refresh_expires,
    )


async def refresh(d: Deps, call: KeyedCall[Tokens, Reply], refresh_token: str) -> Reply:
    """RefreshToken: fresh claims (role, tier and verification changes reach the new access token). The answer
    carries tokens: stored sealed."""
    prior = await call.replay(d.sealed)
    if prior is not None:
        return prior
    now = d.now()
    async with d.engine.begin() as conn:
        session = await sessions.find(conn, refresh_token)
        if session is not None and session.used_at is not None and session.revoked_at is None:
            # A spent token presented again: it was stolen (or the client is broken). End the whole login.
            await sessions.revoke_family(conn, session.family_id, now)
            _log.warning("refresh_token_reused", user_id=session.user_id)
            reused = True
        else:
            reused = False
    if reused:
        raise Unauthenticated("TOKEN_INVALID", "refresh token already used; log in again")

    async def op(conn: Any) -> Tokens:
        session = await sessions.find(conn, refresh_token)
        if session is None or session.revoked_at is not None or session.used_at is not None:
            raise Unauthenticated("TOKEN_INVALID", "unknown or revoked refresh token")
        if aware(session.expires_at) <= now:
            raise Unauthenticated("TOKEN_EXPIRED", "refresh token expired; log in again")
        row = await users.get_user(conn, session.user_id)
        if row is None or row.erased_at is not None:
            raise Unauthenticated("TOKEN_INVALID", "the user no longer exists")
        if not await sessions.spend(conn, session.session_id, now):
            raise Unauthenticated("TOKEN_INVALID", "refresh token already used; log in again")
        return await issue(d, conn, row, session.family_id, now)

    return await call.commit(d.sealed, op)


async def revoke(d: Deps, call: KeyedCall[int, Reply], *, refresh_token: str, user_id: str) -> Reply:
    """RevokeToken: one login (by any of its refresh tokens) or every login of a user; the answer gets how
    many were live. Only the owner (or an operator) may."""
    prior = await call.replay(d.idem)
    if prior is not None:
        return prior
    now = d.now()
    count = 0

    async def op(conn: Any) -> int:
        nonlocal count
        if user_id:
            require_owner(user_id, "sessions")
            count = await sessions.revoke_user(conn, user_id, now)
            return count
        session = await sessions.find(conn, refresh_token)
        if session is None:
            return 0
        require_owner(session.user_id, "sessions")
        count = 1 if await sessions.revoke_family(conn, session.family_id, now) else 0
        return count

    reply, own = await call.commit_own(d.idem, op)
    if own:
        _log.info("sessions_revoked", count=count)
    return reply


async def service_token(d: Deps, service: str, credential: str) -> ServiceToken:
    """GetServiceToken: a token for a mesh service that shows its credential (derived from the mesh secret)."""
    if not check_credential(d.mesh_secret, service, credential):
        # The name comes from an unauthenticated caller: escape what a terminal would not show as is.
        shown = service if service.isprintable() else ascii(service)
        _log.warning("service_token_refused", service=shown)
        raise Unauthenticated("BAD_CREDENTIALS", "unknown service or wrong credential")
    now = int(d.clock())
    claims = service_claims(service, now, d.settings.identity_service_token_ttl_seconds)
    return ServiceToken(await d.keys.sign(claims), datetime.fromtimestamp(claims["exp"], UTC))


class LocalServiceTokens:
    """Identity's own service token for its outgoing calls: signed here, no round trip."""

    def __init__(self, keys: KeyRing, ttl: int) -> None:
        self._keys = keys
        self._ttl = ttl
        self._token: str | None = None
        self._renew_at = 0.0

    async def token(self) -> str | None:
        now = time.time()
        if self._token is None or now >= self._renew_at:
            self._token = await self._keys.sign(service_claims("identity", int(now), self._ttl))
            self._renew_at = now + self._ttl / 2
        return self._token
