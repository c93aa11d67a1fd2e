"""Per-caller rate limits: a caller over its rate is refused at once, never queued.

Each caller has a token bucket (rate per second, burst). A call that finds the
bucket empty is answered RESOURCE_EXHAUSTED with ErrorInfo reason RATE_LIMITED
and a google.rpc.RetryInfo saying when a token will be back; the handler never
runs. Who the caller is:

- the verified principal (token subject) once the auth check passed; finmesh
  services (service tokens) draw from their own, larger buckets, because one
  service token carries the traffic of many users (all payments reach risk as
  "service:payments") and their callers were already limited one hop earlier;
- the peer's address (host only: every connection has a new source port) for
  public RPCs without a token, for FINMESH_AUTH_MODE=off, and for calls the
  auth check refuses, so a flood of bad tokens is limited too.

Health checks and reflection are not guarded servicers and are not limited:
probes must see a busy server as alive. Overall overload is bounded by the
server's in-flight cap (grpc `maximum_concurrent_rpcs`, answered
RESOURCE_EXHAUSTED by gRPC itself), which does count them.

Each bucket is a caller's for one method (a caller flooding one method keeps
its budget on the others). They live in this process (FINMESH_RATE_LIMIT_BACKEND
=local: N per second per pod), or in Redis, shared by every replica of both
colors (=redis; finmesh.platform.rpc.shared_buckets), with this process's as the
fallback while Redis is down or slow. The in-flight cap is per pod either way:
it protects this process's memory and CPU, which no other pod shares.

Memory is bounded: at most `max_callers` local buckets are kept, least recently
used dropped first. A dropped caller comes back with a full bucket, which only
errs towards serving.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2

from finmesh.platform.auth.context import Principal
from finmesh.platform.config import ServiceSettings
from finmesh.platform.errors import DomainError, ResourceExhausted
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.rpc.guard import to_status
from finmesh.platform.rpc.shared_buckets import SharedBuckets
from finmesh.platform.storage.idempotency import StoredRefusal

_log = get_logger("finmesh.ratelimit")

Check = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One token bucket per key, at most `max_keys` of them (least recently used dropped first)."""

    def __init__(self, rate: float, burst: int, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take one token for `key`: 0.0 when granted, else the seconds until one is back."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class RateLimited(StoredRefusal):
    """A ready-made RESOURCE_EXHAUSTED status with a RetryInfo (the guard sends a StoredRefusal's status as it
    is). Identity's login throttle answers with it too, under its own reason."""

    def __init__(
        self, retry_after: float, reason: str = "RATE_LIMITED", message: str = "too many calls; retry later"
    ) -> None:
        millis = max(1, int(retry_after * 1000 + 0.999))
        status = to_status(ResourceExhausted(reason, message, retry_after_ms=str(millis)))
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(millis)
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(retry)
        super().__init__(status)


def peer_host(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's address without its port ("ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1")."""
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class RateLimiter:
    """Buckets for users (and peers) and, larger, for finmesh services; wraps each RPC's auth check."""

    def __init__(
        self,
        callers: TokenBuckets,
        services: TokenBuckets,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedBuckets | None = None,
    ):
        self.callers = callers
        self.services = services
        # Redis' buckets when configured; `callers` and `services` are then the fallback.
        self.shared = shared
        self.refused = 0
        self._clock = clock
        self._logged_at = float("-inf")

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> RateLimiter | None:
        """None when FINMESH_RATE_LIMIT_PER_CALLER_RPS is 0 (limits off)."""
        if not settings.rate_limit_per_caller_rps:
            return None
        size = settings.rate_limit_max_callers
        callers = TokenBuckets(settings.rate_limit_per_caller_rps, settings.rate_limit_per_caller_burst, size)
        services = TokenBuckets(settings.rate_limit_per_service_rps, settings.rate_limit_per_service_burst, size)
        shared = SharedBuckets.from_settings(settings) if settings.rate_limit_backend == "redis" else None
        limiter = cls(callers, services, shared=shared)
        _log.info("rate_limits", **(shared.describe() if shared is not None else {"backend": "local"}))
        return limiter

    async def admit(
        self, principal: Principal | None, context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> None:
        if principal is not None and principal.is_service:
            kind, caller, buckets = "services", principal.subject, self.services
        else:
            caller = principal.subject if principal is not None else peer_host(context)
            kind, buckets = "callers", self.callers
        wait = None
        if self.shared is not None:
            wait = await self.shared.take(kind, method, caller, buckets.rate, buckets.burst)
        if wait is None:
            wait = buckets.take(f"{caller}\0{method}")
        if wait:
            self.refused += 1
            self._log_refusals(method)
            raise RateLimited(wait)

    def _log_refusals(self, method: str) -> None:
        # At most one line a second: a flood must not turn into a flood of log lines. No caller in it:
        # a subject may be a user id; the span of each refused call has its code.
        now = self._clock()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            _log.warning("rpc_rate_limited", method=method, refused_so_far=self.refused)

    def guard(self, check: Check | None, full_method: str) -> Check:
        """The auth check (if any), then one token from the caller's bucket for this method."""
        method = full_method.lstrip("/")

        async def limited(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                principal = await check(request, context) if check is not None else None
            except DomainError:
                # Refused by auth: the caller is not established, its address is.
                await self.admit(None, context, method)
                raise
            await self.admit(principal, context, method)
            return principal

        return limited

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


class LimitedAuthorizer:
    """An authorizer (or none, with auth off) whose every bound check also takes a rate-limit token."""

    def __init__(self, inner: Any, limiter: RateLimiter) -> None:
        self._inner = inner
        self._limiter = limiter

    def bind(self, method: Any, full_method: str) -> Check:
        check = self._inner.bind(method, full_method) if self._inner is not None else None
        return self._limiter.guard(check, full_method)

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
