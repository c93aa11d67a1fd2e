"""The share of calls each color served, over time, read from the servers' own /metrics.

A sampler polls every process's /metrics (the same `rpc_server_call_duration_seconds_count`
series Prometheus scrapes, health excluded as in finmesh.rollout.queries) and
keeps the cumulative count per color at each reading. The share of a color
between two readings is its calls over all calls in between, which is what a
PromQL `rate()` ratio over that range gives, without a scrape interval's
quantization. `settle_time` then says how long after a weight step the
measured share came, and stayed, within a tolerance of the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_CALLS = "rpc_server_call_duration_seconds"
_HEALTH = "grpc.health.v1.Health"


def calls_served(exposition: str, service: str) -> int:
    """Calls (any status) this process's server answered for `service`, health checks excluded."""
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        if family.name != _CALLS:
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == f"{_CALLS}_count"
                and labels.get("service_name") == service
                and labels.get("rpc_service") != _HEALTH
            ):
                total += sample.value
    return int(total)


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    calls: Mapping[str, int]  # color -> cumulative calls served


def share_between(a: Reading, b: Reading, color: str) -> float | None:
    """`color`'s share of the calls served between readings a and b; None when no call was served."""
    served = {c: b.calls.get(c, 0) - a.calls.get(c, 0) for c in b.calls}
    total = sum(served.values())
    return served.get(color, 0) / total if total > 0 else None


def share_series(
    readings: Sequence[Reading], color: str, window: float, start: float, end: float
) -> list[tuple[float, float]]:
    """(t, share of `color` over (t - window, t]) at each reading t in [start + window, end]."""
    series = []
    for i, b in enumerate(readings):
        if b.at < start + window or b.at > end:
            continue
        earlier = [a for a in readings[:i] if a.at <= b.at - window]
        if not earlier:
            continue
        share = share_between(earlier[-1], b, color)
        if share is not None:
            series.append((b.at, share))
    return series


def settle_time(series: Sequence[tuple[float, float]], step_at: float, target: float, tolerance: float) -> float | None:
    """Seconds from `step_at` to the first point from which every later share is within `tolerance` of
    `target` (fractions, e.g. 0.25 ± 0.05); None when the series never settles (or ends outside)."""
    settled = None
    for at, share in series:
        inside = abs(share - target) <= tolerance
        settled = (settled if settled is not None else at) if inside else None
    return None if settled is None else settled - step_at


@dataclass
class ShareSampler:
    """Reads each color's /metrics every `every` seconds while running (in a thread: urllib blocks)."""

    service: str
    every: float = 0.25
    readings: list[Reading] = field(default_factory=list)
    _targets: dict[str, list[str]] = field(default_factory=dict)  # color -> metrics host:port of its processes
    _last: dict[str, int] = field(default_factory=dict)  # metrics target -> last count read

    def watch(self, color: str, metrics_target: str) -> None:
        """Count `metrics_target`'s calls under `color` from now on (a process that exits keeps its last count)."""
        self._targets.setdefault(color, []).append(metrics_target)

    def read(self) -> Reading:
        calls: dict[str, int] = {}
        for color, targets in self._targets.items():
            for target in targets:
                try:
                    with urllib.request.urlopen(f"http://{target}/metrics", timeout=2) as reply:
                        self._last[target] = calls_served(reply.read().decode(), self.service)
                except OSError:
                    pass  # gone (drained) or busy: its calls so far still count
                calls[color] = calls.get(color, 0) + self._last.get(target, 0)
        reading = Reading(time.monotonic(), calls)
        self.readings.append(reading)
        return reading

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.read)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)
