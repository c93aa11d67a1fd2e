"""What shared rate limits cost: the no-op payment chain with the buckets local and on Redis, in the same run.

    python -m bench.ratelimit [--rounds 4] [--seconds 3] [--concurrency 48] [--checks 3000]

Two set-ups of finmesh.load.noop (client -> payments stand-in -> risk stand-in, auth on, the services' own
server stack): FINMESH_RATE_LIMIT_BACKEND=local and =redis (the Redis on 127.0.0.1:6379, under a key prefix
of this run's own, deleted at the end). Each hop checks a bucket, so a payment pays two Redis round trips.
Limits are lifted so no call is refused: the limiter's work is measured, not its refusals. Rounds alternate
and reverse every other round; figures are medians, with the redis / local ratio. Then the check alone, in
this process, one after the other: microseconds per local bucket and per Redis script call.
Never passes or fails on a time; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
import uuid

from redis.asyncio import Redis

from bench.mesh import BASE_ENV, Payer, Target, Usage, closed_round, load_average, med, noop_pids, settle
from finmesh.load.engine import LoadResult
from finmesh.load.noop import NoopMesh
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.ratelimit import TokenBuckets
from finmesh.platform.rpc.shared_buckets import SharedBuckets

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _delete_prefix(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def chain(args: argparse.Namespace, prefix: str) -> dict[str, float]:
    redis_env = {
        "FINMESH_RATE_LIMIT_BACKEND": "redis",
        "FINMESH_REDIS_URL": REDIS_URL,
        "FINMESH_REDIS_KEY_PREFIX": prefix,
    }
    meshes = {
        "local buckets": NoopMesh(tracing=True, extra_env=BASE_ENV),
        "redis buckets": NoopMesh(tracing=True, extra_env={**BASE_ENV, **redis_env}),
    }
    try:
        for mesh in meshes.values():
            await mesh.__aenter__()
        targets = [
            Target(name, mesh.target, [Payer("a", "b", mesh.metadata())], functools.partial(noop_pids, mesh))
            for name, mesh in meshes.items()
        ]
        results: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
        usage = {t.name: Usage() for t in targets}
        for r in range(args.rounds):
            for target in targets if r % 2 == 0 else targets[::-1]:
                await settle()
                results[target.name].append(
                    await closed_round(target, args.concurrency, args.seconds, 1.0, usage[target.name])
                )
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{name} {runs[-1].throughput:.0f}/s" for name, runs in results.items())
                + f"; load {load_average()}",
                flush=True,
            )
    finally:
        for mesh in meshes.values():
            await mesh.__aexit__(None, None, None)
    rate = {name: med([r.throughput for r in runs]) for name, runs in results.items()}
    print(f"\nno-op chain, closed loop, {args.concurrency} concurrent, {args.rounds} x {args.seconds:g} s (medians):")
    for name, runs in results.items():
        cpu = sum(med(ms) for ms in usage[name].cpu_ms.values())
        print(
            f"  {name:<15}{rate[name]:>6.0f}/s  p50 {med([r.percentile_ms(50) for r in runs]):>6.1f} ms  "
            f"p99 {med([r.percentile_ms(99) for r in runs]):>6.1f} ms  CPU ms per payment {cpu:.2f}"
        )
    ratio = rate["redis buckets"] / rate["local buckets"]
    print(f"  redis / local throughput: {ratio:.2f} (two bucket checks per payment, one per hop)")
    return rate


async def single_checks(count: int, prefix: str) -> None:
    local = TokenBuckets(1e9, 10**9, 10_000)
    started = time.perf_counter()
    for i in range(count):
        local.take(f"caller-{i % 100}\0bench/Method")
    local_us = (time.perf_counter() - started) / count * 1e6
    settings = ServiceSettings(
        rate_limit_backend="redis", redis_url=REDIS_URL, redis_key_prefix=prefix, redis_timeout_seconds=1.0
    )
    shared = SharedBuckets.from_settings(settings)
    try:
        await shared.take("callers", "bench/Method", "warm-up", 1e9, 10**9)
        started = time.perf_counter()
        for i in range(count):
            await shared.take("callers", "bench/Method", f"caller-{i % 100}", 1e9, 10**9)
        redis_us = (time.perf_counter() - started) / count * 1e6
        assert shared.shared, "Redis stopped answering during the bench"
    finally:
        await shared.close()
    print(
        f"\none check, {count} in a row in this process: local {local_us:.1f} µs, Redis script "
        f"{redis_us:.0f} µs (one round trip on loopback)"
    )


async def measure(args: argparse.Namespace) -> None:
    print(f"load average at start: {load_average()}  (cores: {os.cpu_count()})", flush=True)
    prefix = f"finmesh-bench:{uuid.uuid4().hex[:8]}:"
    try:
        await chain(args, prefix)
        await single_checks(args.checks, prefix)
    finally:
        await _delete_prefix(prefix)
    print(f"\nload average at end: {load_average()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--checks", type=int, default=3000)
    asyncio.run(measure(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
