"""Authorization of every RPC from the `finmesh.common.v1.access` option its proto declares.

The servicer guard (rpc_errors.guarded) runs the check bound here before the
handler, so the policy lives with the contract and there is one wrapper per
RPC, not another interceptor. Order of refusals: no token -> UNAUTHENTICATED
TOKEN_MISSING; bad or expired token -> UNAUTHENTICATED TOKEN_INVALID /
TOKEN_EXPIRED; internal-only RPC without a service token, or a permission
none of the caller's roles grants -> PERMISSION_DENIED PERMISSION_MISSING;
a customer naming another user -> PERMISSION_DENIED; a customer moving money
before onboarding completed -> FAILED_PRECONDITION VERIFICATION_REQUIRED.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from finmesh.common.v1 import options_pb2
from finmesh.platform.auth.context import Principal
from finmesh.platform.auth.keys import KeyCache, KeysUnavailable, TokenVerifier, remote_fetcher
from finmesh.platform.auth.roles import OWNED_FIELDS, VERIFIED_ONLY
from finmesh.platform.auth.tokens import TokenError
from finmesh.platform.config import ServiceSettings
from finmesh.platform.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from finmesh.platform.observability.logs import get_logger

_log = get_logger("finmesh.auth")

KEY_FETCH_MIN_TIMEOUT = 2.0  # seconds

Check = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Principal | None]]


def access_policy(method: Any) -> options_pb2.AccessPolicy | None:
    """The AccessPolicy a method descriptor declares, or None."""
    options = method.GetOptions()
    return options.Extensions[options_pb2.access] if options.HasExtension(options_pb2.access) else None


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


def _field(request: Any, path: str) -> str:
    value = request
    for part in path.split("."):
        value = getattr(value, part, "")
    return value if isinstance(value, str) else ""


class Authorizer:
    """Binds one check per RPC at registration; each check verifies the caller's token locally."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def bind(self, method: Any, full_method: str) -> Check:
        policy = access_policy(method)
        owned_field = OWNED_FIELDS.get(full_method, "")
        name = full_method.lstrip("/")

        async def check(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
            token = bearer_token(context)
            if policy is not None and policy.allow_unauthenticated:
                # Public RPCs (register, login, keys) work without a token; a valid one still names the caller.
                return await self._principal_or_none(token)
            if not token:
                raise Unauthenticated("TOKEN_MISSING", "this call needs an access token")
            principal = await self._verify(token)
            if policy is None or not policy.permission:
                _refuse(name, principal, "no access policy declared")  # fail closed
            if policy.internal_only and not principal.is_service:
                _refuse(name, principal, "only finmesh services may call this")
            if policy.permission not in principal.permissions:
                _refuse(name, principal, f"missing permission {policy.permission}")
            if principal.is_customer:
                _check_customer(request, principal, owned_field, policy.permission)
            return principal

        return check

    async def _verify(self, token: str) -> Principal:
        try:
            return await self._verifier.verify(token)
        except TokenError as error:
            raise Unauthenticated(error.reason, error.message) from None
        except KeysUnavailable:
            raise Unavailable("AUTH_KEYS_UNAVAILABLE", "identity's signing keys are not loaded yet; retry") from None

    async def _principal_or_none(self, token: str) -> Principal | None:
        if not token:
            return None
        try:
            return await self._verify(token)
        except Unauthenticated:
            return None

    def warm(self) -> None:
        """Fetch the keys at start, not on the first call."""
        self._verifier.warm()

    async def close(self) -> None:
        await self._verifier.close()


def _refuse(method: str, principal: Principal, why: str) -> NoReturn:
    _log.info("rpc_refused", method=method, subject=principal.subject, roles=sorted(principal.roles), why=why)
    raise PermissionDenied("PERMISSION_MISSING", f"permission denied: {why}")


def _check_customer(request: Any, principal: Principal, owned_field: str, permission: str) -> None:
    if owned_field:
        owner = _field(request, owned_field)
        if not owner:
            raise InvalidArgument(FieldViolation(owned_field, "required: your own user id"))
        if owner != principal.subject:
            raise PermissionDenied("PERMISSION_MISSING", "customers may only act on their own data")
    if permission in VERIFIED_ONLY and not principal.verified:
        raise FailedPrecondition(
            "VERIFICATION_REQUIRED", "complete the identity, contact and real-name checks before transacting"
        )


def remote_authorizer(settings: ServiceSettings) -> Authorizer:
    """The authorizer of a service other than identity: keys fetched from identity and cached."""
    if not settings.identity_target:
        _log.warning("auth_without_identity", why="FINMESH_IDENTITY_TARGET unset: every token will be refused")
    # A key fetch is rare and, warmed at start, off the request path: a deadline tuned for hot calls would
    # fail it on a busy node and leave the service refusing good tokens.
    keys = KeyCache(
        remote_fetcher(settings.identity_target, max(settings.call_timeout_seconds, KEY_FETCH_MIN_TIMEOUT)),
        refresh_seconds=settings.auth_keys_refresh_seconds,
    )
    return Authorizer(TokenVerifier(keys))
