"""Shared rate limits (FINMESH_RATE_LIMIT_BACKEND=redis): two payments replicas, one caller over its limit.

Each replica is the real payments service (auth enforced against tests.auth.Issuer) on an ephemeral port; both
use one database and the Redis on 127.0.0.1:6379 under a key prefix of the test's own, deleted afterwards. To
partition Redis off, the replicas reach it through a tests.reliability.tcp_proxy.TcpProxy; the shared Redis
is never stopped.

Tolerance of the combined accepted count over a run of T seconds (limit = burst + rate x T):
- upper: limit + 1. The script takes tokens atomically on Redis' single clock, and every accepted call's
  take happened inside the client's [start, end] window, so only float rounding can add a token;
- lower: 0.8 x limit. The caller always has calls waiting, so a refilled token waits at most one call
  latency to be taken; 20% covers the last refill after the final call and a loaded 2-core machine's
  stalls (the runs: 0.93-0.99 of the limit).
The local backend in the same test gives each replica its own bucket: ~2 x limit combined.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.rpc.guard import reason_of
from finmesh.platform.rpc.ratelimit import RateLimiter
from finmesh.platform.rpc.server import RunningServer
from finmesh.platform.rpc.shared_buckets import key_ttl_ms
from finmesh.platform.runner import start_app
from tests import metrics
from tests.auth import Issuer, bearer
from tests.reliability.tcp_proxy import TcpProxy

REDIS_PORT = 6379
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    client = Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means "no Redis here"
        await client.aclose()
        message = f"Redis at 127.0.0.1:{REDIS_PORT} unreachable ({type(error).__name__})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI requires it")
        pytest.skip(message)
    prefix = f"finmesh-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        await _delete_keys(client, prefix)
        await client.aclose()


async def _delete_keys(client: Redis, prefix: str) -> int:
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
    if keys:
        await client.delete(*keys)
    return len(keys)


@dataclass
class Replica:
    server: RunningServer
    stub: pay_grpc.PaymentsServiceStub

    @property
    def limiter(self) -> RateLimiter:
        assert self.server.limiter is not None
        return self.server.limiter


@asynccontextmanager
async def payments_replicas(tmp_path: Path, issuer: Issuer, count: int, **limits: Any) -> AsyncIterator[list[Replica]]:
    """`count` payments servers on one SQLite database (migrated by the first), each with its own limiter."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    database = f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}"
    async with AsyncExitStack() as stack:
        replicas = []
        for index in range(count):
            settings = PaymentsSettings(
                host="127.0.0.1",
                port=0,
                data_dir=tmp_path / f"replica-{index}",
                service_name="payments",
                database_url=database,
                tracing_enabled=False,
                # Unused by the calls below; payments only needs somewhere to point.
                risk_target="127.0.0.1:1",
                notify_target="127.0.0.1:1",
                shutdown_grace_seconds=0.0,
                **issuer.settings(),
                **limits,
            )
            app = await payments_app.build(settings)
            server = await start_app(app, settings)
            stack.push_async_callback(app.close)
            stack.push_async_callback(server.drain, settings)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            stack.push_async_callback(channel.close)
            replicas.append(Replica(server, pay_grpc.PaymentsServiceStub(channel)))
        yield replicas


async def _accepted(stub: pay_grpc.PaymentsServiceStub, md: Any, latencies: list[float] | None = None) -> bool:
    """One call; False when the rate limiter refused it. Anything else the handler answered counts as accepted."""
    started = time.monotonic()
    try:
        await stub.ListAccounts(pay_pb.ListAccountsRequest(), metadata=md, timeout=2)
        return True
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(error) == "RATE_LIMITED":
            return False
        assert error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED, "a call waited out its deadline"
        return True
    finally:
        if latencies is not None:
            latencies.append(time.monotonic() - started)


async def _hammer(replicas: list[Replica], md: Any, seconds: float, workers: int = 4) -> tuple[list[int], float]:
    """`workers` closed loops per replica, all as one caller, for `seconds`: calls accepted per replica."""
    accepted = [0] * len(replicas)
    started = time.monotonic()
    deadline = started + seconds

    async def loop(index: int) -> None:
        while time.monotonic() < deadline:
            if await _accepted(replicas[index].stub, md):
                accepted[index] += 1

    await asyncio.gather(*(loop(i) for i in range(len(replicas)) for _ in range(workers)))
    return accepted, time.monotonic() - started


async def _round_robin(replicas: list[Replica], md: Any, calls: int, latencies: list[float]) -> list[int]:
    """`calls` calls one after the other, alternating between the replicas: accepted per replica."""
    accepted = [0] * len(replicas)
    for i in range(calls):
        index = i % len(replicas)
        accepted[index] += await _accepted(replicas[index].stub, md, latencies)
    return accepted


async def test_two_replicas_share_one_callers_limit_on_redis(tmp_path: Path, redis_prefix: str) -> None:
    rate, burst, seconds = 20.0, 10, 2.0
    limits = {"rate_limit_per_caller_rps": rate, "rate_limit_per_caller_burst": burst}
    issuer = await Issuer().start()
    try:
        results = {}
        for backend in ("redis", "local"):
            extra = {"redis_url": REDIS_URL, "redis_key_prefix": redis_prefix} if backend == "redis" else {}
            async with payments_replicas(
                tmp_path / backend, issuer, 2, rate_limit_backend=backend, **limits, **extra
            ) as (replicas):
                caller = bearer(issuer.customer(uuid.uuid4().hex))
                accepted, elapsed = await _hammer(replicas, caller, seconds)
                limit = burst + rate * elapsed
                results[backend] = (accepted, elapsed, limit)
                print(
                    f"\n{backend}: one caller over 2 replicas for {elapsed:.2f}s: accepted {accepted} "
                    f"= {sum(accepted)}, limit {limit:.0f} (x{sum(accepted) / limit:.2f})"
                )
                if backend == "redis":
                    assert all(r.limiter.shared is not None and r.limiter.shared.shared for r in replicas)
        accepted, _, limit = results["redis"]
        assert 0.8 * limit <= sum(accepted) <= limit + 1
        # Both replicas served the caller: the bound is the shared bucket's, not one pod taking all.
        assert min(accepted) >= 0.2 * limit
        local, _, local_limit = results["local"]
        # Each pod its own bucket: the same caller gets about twice the limit.
        assert sum(local) >= 1.6 * local_limit
        assert all(n >= 0.8 * local_limit for n in local)
    finally:
        await issuer.stop()


async def test_redis_blackholed_each_pod_falls_back_to_its_own_buckets_and_returns(
    tmp_path: Path, redis_prefix: str
) -> None:
    rate, burst, timeout = 1.0, 5, 0.05
    proxy = await TcpProxy(REDIS_PORT).start()
    issuer = await Issuer().start()
    admin = Redis.from_url(REDIS_URL)
    try:
        async with payments_replicas(
            tmp_path,
            issuer,
            2,
            rate_limit_backend="redis",
            redis_url=f"redis://{proxy.target}/0",
            redis_key_prefix=redis_prefix,
            redis_timeout_seconds=timeout,
            redis_probe_max_seconds=0.4,
            rate_limit_per_caller_rps=rate,
            rate_limit_per_caller_burst=burst,
        ) as replicas:
            caller = bearer(issuer.customer(uuid.uuid4().hex))
            latencies: list[float] = []

            # Shared: the two pods hand out one burst between them.
            shared = await _round_robin(replicas, caller, 20, latencies)
            assert burst <= sum(shared) <= burst + 1
            keys = [key async for key in admin.scan_iter(match=redis_prefix + "*")]
            assert len(keys) == 1  # one caller, one method: one bucket, hashed (no user id in Redis)
            assert 0 < await admin.pttl(keys[0]) <= key_ttl_ms(rate, burst)

            fallbacks_before = metrics.value("finmesh.ratelimit.fallbacks", reason="timeout")
            proxy.blackhole()
            latencies.clear()
            with capture_logs() as logs:
                fallen = await _round_robin(replicas, caller, 20, latencies)
                switches = [e for e in logs if e["event"] == "ratelimit_backend_changed"]
                # Every call answered, none near its 2 s deadline: only each pod's first waited for Redis.
                assert max(latencies) < timeout + 0.5
                # Each pod's own, full bucket: the caller gets a burst from each.
                assert 2 * burst <= sum(fallen) <= 2 * burst + 2, fallen
                assert all(not r.limiter.shared.shared for r in replicas if r.limiter.shared is not None)
                assert [e["backend"] for e in switches] == ["local", "local"]  # one line per pod, not per call
                assert metrics.value("finmesh.ratelimit.fallbacks", reason="timeout") - fallbacks_before == 2
                assert metrics.value("finmesh.ratelimit.backend", backend="local") >= 2
                slow_calls = sum(1 for latency in latencies if latency >= timeout * 0.8)
                print(
                    f"\nRedis blackholed: accepted {fallen}; calls that waited for Redis: {slow_calls}; "
                    f"slowest {max(latencies) * 1000:.0f} ms"
                )

                proxy.heal()
                started = time.monotonic()
                while any(not r.limiter.shared.shared for r in replicas if r.limiter.shared is not None):
                    assert time.monotonic() - started < 5, "no pod went back to Redis"
                    await asyncio.sleep(0.05)
                back_after = time.monotonic() - started
                switches = [e for e in logs if e["event"] == "ratelimit_backend_changed"]
                assert [e["backend"] for e in switches] == ["local", "local", "redis", "redis"]
            assert all("redis://" not in str(event) for event in logs)

            # Shared again: with the Redis bucket reset, the pods hand out one burst between them (their local
            # buckets were drained above and would give at most a refill).
            await _delete_keys(admin, redis_prefix)
            again = await _round_robin(replicas, caller, 20, latencies)
            print(f"Redis healed: back on it after {back_after:.2f}s, accepted {again}")
            assert burst <= sum(again) <= burst + 1
            assert min(again) >= 1
    finally:
        await admin.aclose()
        await issuer.stop()
        await proxy.stop()
