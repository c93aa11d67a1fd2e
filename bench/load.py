"""Closed-loop load helpers shared by the benchmarks: N workers calling as fast as answers come."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Round:
    calls: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


async def closed_loop(call: Callable[[], Awaitable[object]], *, concurrency: int, seconds: float) -> Round:
    """Run `concurrency` workers for `seconds`; count successes, errors and latencies."""
    stop_at = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while (start := time.perf_counter()) < stop_at:
            try:
                await call()
            except Exception:  # noqa: BLE001 - a benchmark counts failures, it does not stop on them
                errors += 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Round(len(latencies), errors, time.perf_counter() - began, latencies)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
