"""The service-quality report (seed §8.2): each objective's figures over a window, read from Prometheus.

Counted from the raw RPC histogram (`rpc_server_call_duration_seconds`), not from recording rules, so it works on
any Prometheus that scrapes finmesh, including one that loads no rules. Per service: availability (calls not failed
by the server, objectives.SERVER_FAULT_CODES), per latency class: the share of successful calls under the
class's threshold, and for both the error budget left over the window and the burn rate of the last 1 h and 6 h.
Latency classes also get p50/p95/p99 (histogram_quantile, so as coarse as the buckets). A window without calls
has no figures (None), never 100%.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from finmesh.rollout.prometheus import PrometheusClient, PrometheusError, number
from finmesh.slo.objectives import (
    AVAILABILITY,
    LATENCY,
    SERVER_FAULT_CODES,
    AvailabilityObjective,
    LatencyObjective,
)

METRIC = "rpc_server_call_duration_seconds"
BURN_WINDOWS = ("1h", "6h")
QUANTILES = (0.5, 0.95, 0.99)
# Points on each service's chart: a day each over the default 28 d window.
CHART_POINTS = 28
# Queries in flight at once: enough to finish in about a round trip, few enough not to load Prometheus.
PARALLEL_QUERIES = 8

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


# --- the arithmetic -------------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration ("28d", "1h30m")."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r} (e.g. 28d, 6h, 1h30m)")
    return sum(int(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class Counts:
    """Calls in a window: all of them, and those that count against the objective."""

    total: float
    bad: float


def good_ratio(counts: Counts) -> float | None:
    """The SLI: share of good calls; None without calls (no traffic is no evidence, not 100%)."""
    if counts.total <= 0:
        return None
    return 1.0 - counts.bad / counts.total


def budget_left(counts: Counts, target: float) -> float | None:
    """Share of the window's error budget not spent; negative when overspent (the budget is (1 - target) of the
    window's calls)."""
    ratio = good_ratio(counts)
    return None if ratio is None else 1.0 - (1.0 - ratio) / (1.0 - target)


def burn_rate(counts: Counts, target: float) -> float | None:
    """How many times faster than the objective allows the budget burns: 1 spends it exactly over the period."""
    ratio = good_ratio(counts)
    return None if ratio is None else (1.0 - ratio) / (1.0 - target)


def counts_from_buckets(buckets: dict[float, float], threshold: float) -> Counts:
    """A latency SLI from one histogram's bucket counts (cumulative, by upper bound): bad = slower than threshold."""
    total = buckets.get(math.inf, 0.0)
    under = next((count for bound, count in buckets.items() if math.isclose(bound, threshold)), None)
    if under is None:
        raise ValueError(f"no bucket bound at {threshold} s: a latency threshold must be one (objectives.py)")
    return Counts(total=total, bad=max(total - under, 0.0))


def ratio_series(
    total: Sequence[tuple[float, float]], bad: Sequence[tuple[float, float]]
) -> list[tuple[float, float | None]]:
    """Error ratio per point of a range query: bad ÷ total at each timestamp of total; None where no calls (a
    missing bad point is 0: a service without server faults has no such series)."""
    bad_at = dict(bad)
    return [(t, bad_at.get(t, 0.0) / n if n > 0 else None) for t, n in total]


# --- the figures ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """One objective over the report's window, and over the burn-rate windows."""

    name: str
    service: str
    target: float
    window: Counts
    burn: dict[str, Counts]  # by BURN_WINDOWS

    @property
    def ratio(self) -> float | None:
        return good_ratio(self.window)

    @property
    def budget_left(self) -> float | None:
        return budget_left(self.window, self.target)

    def burn_rate(self, window: str) -> float | None:
        return burn_rate(self.burn[window], self.target)


@dataclass(frozen=True)
class LatencyFigures(Figures):
    threshold_seconds: float = 0.0
    percentiles: dict[float, float | None] = field(default_factory=dict)  # by QUANTILES, seconds


@dataclass(frozen=True)
class ServiceReport:
    availability: Figures
    latency: list[LatencyFigures]
    # (unix time at the end of each step, error ratio over the step or None without calls)
    error_ratio: list[tuple[float, float | None]]


@dataclass(frozen=True)
class Report:
    prometheus: str
    window: str
    at: float  # unix seconds: the window's end
    step_seconds: float  # of the charts' points
    services: list[ServiceReport]

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window)


# --- the queries ----------------------------------------------------------------------------------------------


def _faults() -> str:
    return "|".join(SERVER_FAULT_CODES)


def availability_query(window: str, *, bad: bool) -> str:
    selector = f'{{rpc_response_status_code=~"{_faults()}"}}' if bad else ""
    return f"sum by (service_name) (increase({METRIC}_count{selector}[{window}]))"


def _class_buckets(objective: LatencyObjective, window: str) -> str:
    # Successful calls only: a latency objective is about answers; failures count against availability.
    selector = f'service_name="{objective.service}", rpc_method=~"{objective.methods}", rpc_response_status_code="OK"'
    return f"sum by (le) (increase({METRIC}_bucket{{{selector}}}[{window}]))"


def latency_buckets_query(objective: LatencyObjective, window: str) -> str:
    return _class_buckets(objective, window)


def quantile_query(objective: LatencyObjective, window: str, quantile: float) -> str:
    return f"histogram_quantile({quantile}, {_class_buckets(objective, window)})"


class Prometheus:
    """Prometheus' HTTP API for asyncio: the tools' one client (finmesh.rollout.prometheus), each query in a
    thread, at most PARALLEL_QUERIES at once."""

    def __init__(self, url: str, *, timeout_seconds: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._client = PrometheusClient(self.url, timeout_seconds=timeout_seconds)
        self._slots = asyncio.Semaphore(PARALLEL_QUERIES)

    async def instant(self, query: str, at: float) -> list[dict[str, Any]]:
        async with self._slots:
            return await asyncio.to_thread(self._client.query, query, at)

    async def range(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        async with self._slots:
            return await asyncio.to_thread(self._client.query_range, query, start, end, step)

    async def close(self) -> None:
        """Nothing stays open between queries (kept so callers need not know)."""


def by_label(result: Iterable[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): number(s["value"][1]) for s in result}


def buckets(result: Iterable[dict[str, Any]]) -> dict[float, float]:
    # By number, not by text: exporters write a bound as "1", "1.0" or "1e+00".
    return {number(s["metric"]["le"]): number(s["value"][1]) for s in result}


def finite_or_none(result: list[dict[str, Any]]) -> float | None:
    if not result:
        return None
    value = number(result[0]["value"][1])
    return value if math.isfinite(value) else None


def points(result: Iterable[dict[str, Any]], label: str) -> dict[str, list[tuple[float, float]]]:
    return {s["metric"].get(label, ""): [(float(t), number(v)) for t, v in s["values"]] for s in result}


async def _availability(prom: Prometheus, window: str, at: float) -> dict[str, Counts]:
    total, bad = await asyncio.gather(
        prom.instant(availability_query(window, bad=False), at), prom.instant(availability_query(window, bad=True), at)
    )
    totals, bads = by_label(total, "service_name"), by_label(bad, "service_name")
    return {s: Counts(total=n, bad=bads.get(s, 0.0)) for s, n in totals.items()}


async def _latency(prom: Prometheus, objective: LatencyObjective, window: str, at: float) -> LatencyFigures:
    windows = (window, *BURN_WINDOWS)
    counted, quantiles = await asyncio.gather(
        asyncio.gather(*(prom.instant(latency_buckets_query(objective, w), at) for w in windows)),
        asyncio.gather(*(prom.instant(quantile_query(objective, window, q), at) for q in QUANTILES)),
    )
    try:
        counts = [counts_from_buckets(buckets(r), objective.threshold_seconds) if r else Counts(0, 0) for r in counted]
    except ValueError as error:  # the services export other buckets than the objectives were written for
        raise PrometheusError(f"{objective.name}: {error}") from None
    return LatencyFigures(
        name=objective.name,
        service=objective.service,
        target=objective.target,
        window=counts[0],
        burn=dict(zip(BURN_WINDOWS, counts[1:], strict=True)),
        threshold_seconds=objective.threshold_seconds,
        percentiles={q: finite_or_none(r) for q, r in zip(QUANTILES, quantiles, strict=True)},
    )


def chart_step(window_seconds: float) -> float:
    return max(window_seconds / CHART_POINTS, 60.0)


async def collect(
    url: str,
    window: str,
    *,
    at: float | None = None,
    availability: Sequence[AvailabilityObjective] = AVAILABILITY,
    latency: Sequence[LatencyObjective] = LATENCY,
) -> Report:
    """Every figure of the report, as of `at` (default now). Raises PrometheusError."""
    seconds = parse_duration(window)
    end = time.time() if at is None else at
    step = chart_step(seconds)
    step_window = f"{int(step)}s"
    prom = Prometheus(url)
    try:
        by_window, classes, (chart_total, chart_bad) = await asyncio.gather(
            asyncio.gather(*(_availability(prom, w, end) for w in (window, *BURN_WINDOWS))),
            asyncio.gather(*(_latency(prom, objective, window, end) for objective in latency)),
            # The chart's first point counts the window's first step; later points each count one step.
            asyncio.gather(
                *(
                    prom.range(availability_query(step_window, bad=bad), end - seconds + step, end, step)
                    for bad in (False, True)
                )
            ),
        )
    finally:
        await prom.close()
    totals, bads = points(chart_total, "service_name"), points(chart_bad, "service_name")
    none = Counts(0.0, 0.0)
    services = [
        ServiceReport(
            availability=Figures(
                name=objective.name,
                service=objective.service,
                target=objective.target,
                window=by_window[0].get(objective.service, none),
                burn={w: c.get(objective.service, none) for w, c in zip(BURN_WINDOWS, by_window[1:], strict=True)},
            ),
            latency=[c for c in classes if c.service == objective.service],
            error_ratio=ratio_series(totals.get(objective.service, []), bads.get(objective.service, [])),
        )
        for objective in availability
    ]
    return Report(prometheus=url, window=window, at=end, step_seconds=step, services=services)


# --- as text (the terminal table and the page alike) ----------------------------------------------------------

NO_TRAFFIC = "no traffic"


def percent(value: float | None, *, digits: int) -> str:
    return NO_TRAFFIC if value is None else f"{100 * value:.{digits}f}%"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def millis(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.4g} ms"


def calls(count: float) -> str:
    # increase() extrapolates, so counts over a window need not be whole.
    return f"{round(count):,}"


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
