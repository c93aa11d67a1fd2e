"""Overload: per-caller rate limits refuse at once (RESOURCE_EXHAUSTED RATE_LIMITED, with a retry hint), the
in-flight cap refuses instead of queueing, and the limiter's memory stays bounded under a flood of callers.

The server is the real risk service (auth enforced against tests.auth.Issuer) on loopback, with limits
small enough to cross in a few dozen calls.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.guard import reason_of
from finmesh.platform.rpc.ratelimit import TokenBuckets
from finmesh.platform.rpc.server import RunningServer, create_server
from finmesh.risk import app as risk_app
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc
from tests.auth import Issuer, bearer

OFFICER = "risk_officer"


def _slow_rules(registrations: list[Any], delay: float) -> None:
    """Every GetRules call takes `delay` seconds in its handler: calls pile up in flight.

    In the handler, not a server interceptor: gRPC runs interceptors before it counts a call in flight.
    """
    for reg in registrations:
        original = getattr(reg.servicer, "GetRules", None)
        if original is not None:

            async def slow(request: Any, context: Any, original: Any = original) -> Any:
                await asyncio.sleep(delay)
                return await original(request, context)

            reg.servicer.GetRules = slow


@asynccontextmanager
async def risk_server(
    tmp_path: Path, slow_rules: float = 0.0, **limits: Any
) -> AsyncIterator[tuple[Issuer, RunningServer, risk_grpc.RiskServiceStub]]:
    issuer = await Issuer().start()
    settings = ServiceSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        service_name="risk",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'risk.db'}",
        tracing_enabled=False,
        **issuer.settings(),
        **limits,
    )
    app = await risk_app.build(settings)
    await app.start()
    if slow_rules:
        _slow_rules(app.registrations, slow_rules)
    server = await create_server(settings, app.registrations)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield issuer, server, risk_grpc.RiskServiceStub(channel)
    finally:
        await channel.close()
        await server.server.stop(0)
        await app.close()
        for authorizer in server.authorizers:
            await authorizer.close()
        await issuer.stop()


async def _outcome(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _burst(stub: risk_grpc.RiskServiceStub, md: Any, count: int) -> tuple[Counter, float]:
    started = time.monotonic()
    codes = await asyncio.gather(
        *(_outcome(stub.GetRules(risk_pb.GetRulesRequest(), metadata=md, timeout=10)) for _ in range(count))
    )
    return Counter(code.name for code in codes), time.monotonic() - started


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    for detail in rpc_status.from_call(error).details:  # type: ignore[arg-type, union-attr]
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return 0.0


async def test_one_caller_past_its_burst_is_refused_while_others_are_served(tmp_path: Path) -> None:
    rate, burst = 2.0, 10
    async with risk_server(
        tmp_path,
        rate_limit_per_caller_rps=rate,
        rate_limit_per_caller_burst=burst,
        rate_limit_per_service_rps=1000,
        rate_limit_per_service_burst=1000,
    ) as (issuer, server, stub):
        hammer = issuer.md(OFFICER)
        codes, elapsed = await _burst(stub, hammer, 40)
        granted = codes["OK"]
        print(f"\none caller, 40 calls in {elapsed:.2f}s: {dict(codes)}")
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
        # The burst, plus what the bucket refilled while the calls ran; nothing beyond.
        assert burst <= granted <= burst + int(rate * elapsed) + 1

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetRules(risk_pb.GetRulesRequest(), metadata=hammer, timeout=5)
        assert (refused.value.code(), reason_of(refused.value)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert 0 < _retry_delay(refused.value) <= 1 / rate + 0.01
        # Probes are not rate limited: a busy server must not look dead to its orchestrator.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(3 * burst):
                reply = await health.Check(health_pb2.HealthCheckRequest(), metadata=hammer, timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # Another caller has its own bucket; a service (payments' token) its own, larger one.
        other, _ = await _burst(stub, issuer.md(OFFICER), burst)
        assert other == Counter({"OK": burst})
        service = bearer(issuer.service("payments"))
        assess = await asyncio.gather(
            *(
                _outcome(stub.AssessPayment(risk_pb.AssessPaymentRequest(), metadata=service, timeout=10))
                for _ in range(3 * burst)
            )
        )
        assert grpc.StatusCode.RESOURCE_EXHAUSTED not in assess

        # Once the bucket refilled, the first caller is served again.
        await asyncio.sleep(1 / rate + 0.05)
        await stub.GetRules(risk_pb.GetRulesRequest(), metadata=hammer, timeout=5)


async def test_calls_without_a_valid_token_are_limited_by_address(tmp_path: Path) -> None:
    async with risk_server(tmp_path, rate_limit_per_caller_rps=1, rate_limit_per_caller_burst=5) as (_, _, stub):
        codes, _ = await _burst(stub, bearer("not-a-token"), 20)
        print(f"\nbad tokens from one address: {dict(codes)}")
        assert codes == Counter({"UNAUTHENTICATED": 5, "RESOURCE_EXHAUSTED": 15})


async def test_in_flight_cap_refuses_instead_of_queueing(tmp_path: Path) -> None:
    cap, delay = 4, 1.0
    async with risk_server(tmp_path, slow_rules=delay, max_concurrent_rpcs=cap) as (issuer, _, stub):
        md = issuer.md(OFFICER)
        durations: dict[grpc.StatusCode, list[float]] = {}

        async def timed() -> None:
            started = time.monotonic()
            code = await _outcome(stub.GetRules(risk_pb.GetRulesRequest(), metadata=md, timeout=10))
            durations.setdefault(code, []).append(time.monotonic() - started)

        await asyncio.gather(*(timed() for _ in range(3 * cap)))
        print(
            f"\nin-flight cap {cap}: "
            + ", ".join(f"{code.name} x{len(d)} (slowest {max(d):.2f}s)" for code, d in durations.items())
        )
        assert len(durations[grpc.StatusCode.OK]) == cap
        assert len(durations[grpc.StatusCode.RESOURCE_EXHAUSTED]) == 2 * cap
        # Refused at once, not after waiting for a slot.
        assert max(durations[grpc.StatusCode.RESOURCE_EXHAUSTED]) < delay / 2


def test_bucket_table_forgets_least_recent_callers() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=100, clock=lambda: now[0])
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(1.0)
    now[0] = 0.5
    assert buckets.take("a") == pytest.approx(0.5)  # half a token refilled
    for i in range(1000):
        buckets.take(f"caller-{i}")
    assert len(buckets) == 100
    assert buckets.take("a") == 0.0  # forgotten: back with a full bucket, which only errs towards serving


async def test_memory_stays_bounded_under_a_flood_of_callers(tmp_path: Path) -> None:
    """Thousands of distinct callers, each past its burst: the table keeps at most max_callers buckets."""
    max_callers, callers, per_caller = 100, 600, 3
    async with risk_server(
        tmp_path, rate_limit_per_caller_rps=0.1, rate_limit_per_caller_burst=1, rate_limit_max_callers=max_callers
    ) as (issuer, server, stub):
        tokens = [issuer.md(OFFICER) for _ in range(callers)]
        await _burst(stub, issuer.md(OFFICER), 50)  # warm up channels, caches and the handler before measuring
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            rss_before = _rss_kib()
            codes: Counter = Counter()
            started = time.monotonic()
            for start in range(0, callers, 100):
                for md in tokens[start : start + 100]:
                    codes.update((await _burst(stub, md, per_caller))[0])
            elapsed = time.monotonic() - started
            growth = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
        finally:
            tracemalloc.stop()
        rss_growth = _rss_kib() - rss_before
        limiter = server.limiter
        assert limiter is not None
        print(
            f"\nflood: {callers} callers x {per_caller} calls in {elapsed:.1f}s: {dict(codes)}; limiter table "
            f"{len(limiter.callers)} buckets; traced heap growth {growth / 1024:.0f} KiB; RSS growth "
            f"{rss_growth} KiB"
        )
        assert codes["OK"] == callers and codes["RESOURCE_EXHAUSTED"] == callers * 2
        assert len(limiter.callers) == max_callers
        # Generous: the flood itself allocates (grpc, caches); a leak per caller or per refused call
        # would show as megabytes over 1800 calls.
        assert growth < 4 * 1024 * 1024
        assert rss_growth < 64 * 1024


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
