"""Where the rate limiter's token buckets live: in the process, or in Redis, shared by every replica.

FINMESH_RATE_LIMIT_BACKEND=local keeps each bucket in the pod (finmesh.platform.rpc.ratelimit.TokenBuckets): a
limit of N per second is N per pod, so N x replicas x colors for the mesh. With `redis`, one Lua script takes
the token in Redis, atomically, on Redis' clock (TIME), so every replica of both colors draws from the same
bucket: one round trip per call (EVALSHA; EVAL once when Redis has not cached the script yet, after a
restart or a SCRIPT FLUSH).

Redis is never allowed to stall or fail a call. A check that errs or takes longer than
FINMESH_REDIS_TIMEOUT_SECONDS switches this pod to its local buckets at once (that call included): one log
line and one count of `finmesh.ratelimit.fallbacks` per switch, the `finmesh.ratelimit.backend` gauge
shows "local", and no call waits on Redis again until a background probe (PING, backing off from 0.1 s to
FINMESH_REDIS_PROBE_MAX_SECONDS) gets an answer; then the pod is back on the shared buckets, with one more
log line. While it is local, a caller can get the limit from each pod: the fallback errs towards serving.

Keys: `<prefix><kind>:<method>:<caller digest>`. The caller (a token subject, or a peer address for
calls without a valid token) is hashed, so Redis holds no user id or address. Each key expires once its
bucket would be full again (burst / rate, plus a second): an idle caller's bucket is then the same as none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from finmesh.platform.backoff import Backoff
from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.ratelimit_metrics import record_fallback, track_backend

_log = get_logger("finmesh.ratelimit")

# KEYS[1]: the bucket. ARGV: rate (tokens per second), burst, key TTL (ms). Returns the seconds until a token
# is back, as a string ("0": granted; Redis would truncate a Lua number to an integer). Time is Redis' own
# (microseconds, exact in a double), so pods' clocks never disagree about a bucket.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'us')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000000)
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'us', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.6f', wait)
"""
TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()

PROBE_BACKOFF_BASE_SECONDS = 0.1


def bucket_key(prefix: str, kind: str, method: str, caller: str) -> str:
    """The Redis key of `caller`'s bucket for `method` ("callers" or "services" `kind`)."""
    digest = hashlib.blake2b(caller.encode(), digest_size=12).hexdigest()
    return f"{prefix}{kind}:{method}:{digest}"


def key_ttl_ms(rate: float, burst: int) -> int:
    """How long an untouched bucket is worth keeping: until it has refilled to its burst, plus a second."""
    return math.ceil(burst / rate * 1000) + 1000


def redis_client(settings: ServiceSettings) -> Redis:
    """An asyncio client whose every wait is bounded by the limiter's timeout, with no retries of its own
    (a retry would multiply the time a call waits; the fallback is the retry)."""
    timeout = settings.redis_timeout_seconds
    pool = BlockingConnectionPool.from_url(
        settings.redis_url.get_secret_value(),
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    if settings.redis_password.get_secret_value():
        # from_url lets the URL's parts win over keyword arguments; the Secret's password must win.
        pool.connection_kwargs["password"] = settings.redis_password.get_secret_value()
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections


class SharedBuckets:
    """Takes tokens from Redis while it answers in time, else from this pod's `local` buckets."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        timeout: float,
        probe: Backoff,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._probe_backoff = probe
        self._shared = True
        self._probe: asyncio.Task[None] | None = None
        self._closed = False
        track_backend(self)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> SharedBuckets:
        return cls(
            redis_client(settings),
            settings.redis_key_prefix,
            settings.redis_timeout_seconds,
            Backoff(PROBE_BACKOFF_BASE_SECONDS, settings.redis_probe_max_seconds),
        )

    @property
    def backend_in_use(self) -> str:
        return "redis" if self._shared else "local"

    @property
    def shared(self) -> bool:
        return self._shared

    async def take(self, kind: str, method: str, caller: str, rate: float, burst: int) -> float | None:
        """Seconds until `caller` has a token for `method` (0.0: granted), or None when Redis cannot say in
        time: the caller then uses its local buckets."""
        if not self._shared:
            return None
        key = bucket_key(self._prefix, kind, method, caller)
        args = (rate, burst, key_ttl_ms(rate, burst))
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    reply = await self._client.evalsha(TAKE_SHA, 1, key, *args)
                except NoScriptError:
                    # Not cached on this Redis (restarted, flushed, failed over): EVAL caches it again.
                    reply = await self._client.eval(TAKE_SCRIPT, 1, key, *args)
        except TimeoutError:
            self._fall_back("timeout")
            return None
        except (RedisError, OSError) as error:
            self._fall_back("error", error)
            return None
        return float(reply)

    def _fall_back(self, reason: str, error: BaseException | None = None) -> None:
        if not self._shared or self._closed:
            return
        self._shared = False
        record_fallback(reason)
        # The error's class only: a message may carry the server's address, never the URL's password, but
        # one line per outage is all an operator needs.
        _log.warning(
            "ratelimit_backend_changed",
            backend="local",
            reason=reason,
            error=type(error).__name__ if error is not None else "",
            probe_max_seconds=self._probe_backoff.max_seconds,
        )
        self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        attempt = 0
        while not self._closed:
            await asyncio.sleep(self._probe_backoff.delay(attempt))
            attempt += 1
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.ping()
            except (TimeoutError, RedisError, OSError):
                continue
            self._shared = True
            _log.info("ratelimit_backend_changed", backend="redis", probes=attempt)
            return

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self._client.aclose()

    def describe(self) -> dict[str, Any]:
        """For logs at start: where the buckets are, without the URL (it may hold a password)."""
        kwargs = self._client.connection_pool.connection_kwargs
        return {
            "backend": "redis",
            "redis_host": kwargs.get("host", ""),
            "redis_port": kwargs.get("port", ""),
            "tls": "ssl" in str(self._client.connection_pool.connection_class).lower(),
            "key_prefix": self._prefix,
        }
