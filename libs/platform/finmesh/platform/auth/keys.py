"""Token verification from cached public keys: no call to identity per request, and none while it is down.

Keys come from identity's GetPublicKeys. They are refreshed in the
background when older than `refresh_seconds`, and at once when a token
names an unknown kid (a rotation). So that junk tokens cannot hammer
identity, one kid triggers at most one fetch per `unknown_kid_interval` and
all unknown kids together at most `unknown_kid_fetches_per_second`. A
failed refresh keeps the cached keys: a service goes on verifying while
identity is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.platform.auth.context import Principal
from finmesh.platform.auth.tokens import TokenError, check_claims, check_signature, parse
from finmesh.platform.observability.logs import get_logger

_log = get_logger("finmesh.auth")


@dataclass(frozen=True)
class PublishedKey:
    kid: str
    public_key: Ed25519PublicKey
    # Epoch seconds after which tokens signed by this key are refused; None while it is active.
    not_after: float | None = None


KeyFetcher = Callable[[], Awaitable[list[PublishedKey]]]


class KeysUnavailable(Exception):
    """No key was ever fetched and identity cannot be reached: a token can be neither trusted nor refused,
    so the caller must hear a retryable answer, not a verdict on its token."""


def keys_from_proto(reply: id_pb.GetPublicKeysResponse) -> list[PublishedKey]:
    keys = []
    for key in reply.keys:
        if key.algorithm != "EdDSA" or len(key.public_key) != 32:
            continue  # an algorithm this verifier does not speak: never guess
        not_after = key.not_after.ToSeconds() if key.HasField("not_after") else None
        keys.append(PublishedKey(key.key_id, Ed25519PublicKey.from_public_bytes(key.public_key), not_after))
    return keys


def remote_fetcher(identity_target: str, timeout: float = 2.0) -> KeyFetcher:
    """Fetch identity's published keys. A channel per fetch: fetches are rare, and nothing is left open."""

    async def fetch() -> list[PublishedKey]:
        if not identity_target:
            raise ConnectionError("no identity target configured")
        async with grpc.aio.insecure_channel(identity_target) as channel:
            reply = await id_grpc.IdentityServiceStub(channel).GetPublicKeys(
                id_pb.GetPublicKeysRequest(), timeout=timeout
            )
        return keys_from_proto(reply)

    return fetch


class KeyCache:
    def __init__(
        self,
        fetch: KeyFetcher,
        *,
        refresh_seconds: float = 60.0,
        unknown_kid_interval: float = 5.0,
        unknown_kid_fetches_per_second: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._refresh_seconds = refresh_seconds
        self._unknown_kid_interval = unknown_kid_interval
        self._unknown_budget = unknown_kid_fetches_per_second
        self._clock = clock
        self._keys: dict[str, PublishedKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at = -1e18
        self._inflight: asyncio.Task[bool] | None = None
        self._misses: OrderedDict[str, float] = OrderedDict()  # unknown kid -> when it last caused a fetch
        self._unknown_fetches: deque[float] = deque()

    async def get(self, kid: str) -> PublishedKey | None:
        now = self._clock()
        key = self._keys.get(kid)
        if key is not None:
            if self._fetched_at is not None and now - self._fetched_at > self._refresh_seconds:
                self._refresh_in_background()
            return key
        # Unknown kid: a rotation we have not seen yet, or a forged token. Ask identity, rate-limited.
        if self._inflight is not None or self._may_fetch_for(kid, now):
            fetched = await self.refresh()
            if not fetched and self._fetched_at is None:
                self._misses.pop(kid, None)  # the caller's retry may ask again once identity answers
        if self._fetched_at is None:
            raise KeysUnavailable
        return self._keys.get(kid)

    def warm(self) -> None:
        """Start the first fetch now, so that the first call does not wait for it (or fail on it)."""
        self._refresh_in_background()

    def _may_fetch_for(self, kid: str, now: float) -> bool:
        last = self._misses.get(kid)
        if last is not None and now - last < self._unknown_kid_interval:
            return False
        while self._unknown_fetches and now - self._unknown_fetches[0] > 1.0:
            self._unknown_fetches.popleft()
        if len(self._unknown_fetches) >= self._unknown_budget:
            return False
        self._unknown_fetches.append(now)
        self._misses[kid] = now
        self._misses.move_to_end(kid)
        if len(self._misses) > 1024:
            self._misses.popitem(last=False)
        return True

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch already under way); False, keeping the cache, if identity is unreachable."""
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._do_refresh())
        task = self._inflight
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._inflight is task:
                self._inflight = None

    def _refresh_in_background(self) -> None:
        # A failed refresh is not retried on every request: identity may be down for a while.
        if self._inflight is None and self._clock() - self._attempted_at >= min(max(self._refresh_seconds, 1.0), 5.0):
            self._inflight = asyncio.create_task(self._do_refresh())
            self._inflight.add_done_callback(self._clear_inflight)

    def _clear_inflight(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _do_refresh(self) -> bool:
        self._attempted_at = self._clock()
        try:
            keys = await self._fetch()
        except Exception as error:  # noqa: BLE001 - any failure keeps the cached keys
            _log.warning("public_keys_refresh_failed", error=type(error).__name__, cached=len(self._keys))
            return False
        self._keys = {k.kid: k for k in keys}
        self._fetched_at = self._clock()
        return True

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class TokenVerifier:
    """Checks an access token locally and says who holds it."""

    def __init__(
        self,
        keys: KeyCache,
        *,
        leeway_seconds: float = 30.0,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._leeway = leeway_seconds
        self._clock = clock
        # Tokens already verified, until they expire: a client sends the same token many times, and
        # a signature check costs more than the rest of a small RPC's auth.
        self._verified: OrderedDict[str, tuple[Principal, float | None]] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            principal, not_after = hit
            now = self._clock()
            if principal.expires_at > now - self._leeway and (not_after is None or now <= not_after):
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal, not_after = await self._verify(token)
        self._verified[token] = (principal, not_after)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float | None]:
        parsed = parse(token)
        key = await self._keys.get(parsed.kid)
        if key is None:
            raise TokenError("TOKEN_INVALID", "token signed by an unknown key")
        check_signature(parsed, key.public_key)
        now = self._clock()
        check_claims(parsed.claims, now, self._leeway)
        if key.not_after is not None and now > key.not_after:
            raise TokenError("TOKEN_EXPIRED", "token signed by a retired key")
        claims = parsed.claims
        tier = claims.get("tier", "")
        return Principal(
            subject=claims["sub"],
            roles=frozenset(claims["roles"]),
            risk_tier=tier if isinstance(tier, str) else "",
            verified=claims.get("vrf") is True,
            token_id=str(claims.get("jti", "")),
            expires_at=claims["exp"],
        ), key.not_after

    def warm(self) -> None:
        self._keys.warm()

    async def close(self) -> None:
        await self._keys.close()
