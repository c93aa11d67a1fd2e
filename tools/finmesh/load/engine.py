"""The two load engines: open loop (constant arrival rate) and closed loop (fixed concurrency).

Open loop sends call i at its intended time t0 + i/rate whether or not earlier calls have answered, and measures
each latency from that intended time. A server that stalls therefore shows the stall in every call that should
have been sent during it (coordinated-omission correction); a sender that could not keep up is counted in
`late_sends` instead of silently lowering the rate. Closed loop keeps `concurrency` calls in flight and measures
from the real send; it answers "how much can this take", not "how does it behave at this rate".

`call` is `async (i: int) -> None`; any exception is an error, classified by gRPC status name when it carries one.
Calls started during warm-up are run but left out of every figure. The per-second timeline buckets calls by
when they completed (seconds since warm-up ended), so a stall shows where its backlog drained.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from hdrh.histogram import HdrHistogram

Call = Callable[[int], Awaitable[None]]
# Names call i's kind (e.g. the scenario of a mix) for figures by kind.
Label = Callable[[int], str]
Progress = Callable[["Snapshot"], None]

LOWEST_US = 1
# Latencies beyond this are clamped (and still counted): no call the harness makes should take a minute.
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# A send that starts this much after its intended time counts as late: the sender, not the server, fell behind.
LATE_AFTER_S = 0.005
PROGRESS_EVERY_S = 1.0
# A sender that is behind schedule sends without sleeping; it still yields this often.
YIELD_EVERY = 64


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def error_code(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        return error.code().name
    named = getattr(error, "code_name", None)  # an answer the scenario did not expect (e.g. a declined payment)
    return named if isinstance(named, str) else type(error).__name__


def _to_us(seconds: float) -> int:
    return min(HIGHEST_US, max(LOWEST_US, round(seconds * 1_000_000)))


def _percentile_of(sorted_us: list[int], percentile: float) -> float:
    index = max(0, math.ceil(len(sorted_us) * percentile / 100.0) - 1)
    return sorted_us[index] / 1000.0


@dataclass(frozen=True)
class Snapshot:
    """What the progress line shows, about once a second."""

    phase: str  # "warmup" or "measure"
    elapsed_s: float  # since the measured window began (negative during warm-up)
    calls: int
    ok: int
    errors: int
    in_flight: int
    p99_ms: float
    late_sends: int


@dataclass
class LoadResult:
    mode: str  # "open" or "closed"
    calls: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    late_sends: int = 0
    max_send_lag_ms: float = 0.0
    warmup_calls: int = 0
    rate: float | None = None
    concurrency: int | None = None
    # Figures by label (see Label), when the run was given one.
    parts: dict[str, LoadResult] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, percentile: float) -> float:
        if self.histogram.get_total_count() == 0:
            return 0.0
        return self.histogram.get_value_at_percentile(percentile) / 1000.0

    def latency_ms(self) -> dict[str, float]:
        figures = {f"p{p:g}".replace(".", "_"): self.percentile_ms(p) for p in PERCENTILES}
        empty = self.histogram.get_total_count() == 0
        figures["max"] = 0.0 if empty else self.histogram.get_max_value() / 1000.0
        figures["mean"] = 0.0 if empty else round(self.histogram.get_mean_value() / 1000.0, 3)
        return figures

    def distribution(self, ticks_per_half_distance: int = 5) -> list[dict[str, float]]:
        """The HDR percentile distribution: (percentile, latency) steps for a log-x percentile plot."""
        if self.histogram.get_total_count() == 0:
            return []
        points = [
            {"percentile": round(item.percentile_level_iterated_to, 6), "ms": item.value_iterated_to / 1000.0}
            for item in self.histogram.get_percentile_iterator(ticks_per_half_distance)
        ]
        return points

    def summary_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "throughput": round(self.throughput, 3),
            "latency_ms": self.latency_ms(),
        }

    def to_dict(self) -> dict[str, Any]:
        encoded = self.histogram.encode()
        by_label = {"by_label": {name: part.summary_dict() for name, part in sorted(self.parts.items())}}
        return {
            "mode": self.mode,
            "rate": self.rate,
            "concurrency": self.concurrency,
            "calls": self.calls,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "error_count": sum(self.errors.values()),
            "elapsed_s": round(self.elapsed_s, 6),
            "throughput": round(self.throughput, 3),
            "latency_ms": self.latency_ms(),
            "late_sends": self.late_sends,
            "max_send_lag_ms": round(self.max_send_lag_ms, 3),
            "warmup_calls": self.warmup_calls,
            "timeline": self.timeline,
            "distribution": self.distribution(),
            "histogram_hdr": encoded.decode() if isinstance(encoded, bytes) else encoded,
            **(by_label if self.parts else {}),
        }


class _Recorder:
    """Collects measured outcomes into the histogram, the error counts and the per-second timeline."""

    def __init__(self, result: LoadResult, measure_from: float) -> None:
        self.result = result
        self.measure_from = measure_from
        self.last_end = measure_from
        self._seconds: dict[int, list[int]] = {}
        self._second_errors: Counter[int] = Counter()
        self._done: dict[int, dict[str, Any]] = {}

    def record(self, started: float, ended: float, error: BaseException | None, label: str = "") -> None:
        if started < self.measure_from:
            self.result.warmup_calls += 1
            return
        self.last_end = max(self.last_end, ended)
        second = int(ended - self.measure_from)
        latency = _to_us(ended - started)
        code = None if error is None else error_code(error)
        targets = [self.result]
        if label:
            targets.append(self.result.parts.setdefault(label, LoadResult(mode=self.result.mode)))
        for result in targets:
            result.calls += 1
            if code is None:
                result.ok += 1
                result.histogram.record_value(latency)
            else:
                result.errors[code] += 1
        if code is None:
            self._seconds.setdefault(second, []).append(latency)
        else:
            self._second_errors[second] += 1
            self._seconds.setdefault(second, [])

    def fold_before(self, second: float) -> None:
        """Turn finished seconds into timeline rows so a long run keeps one row, not every latency, per second."""
        for done in [s for s in self._seconds if s < second]:
            latencies = sorted(self._seconds.pop(done))
            self._done[done] = {
                "second": done,
                "ok": len(latencies),
                "errors": self._second_errors.pop(done, 0),
                "p50_ms": _percentile_of(latencies, 50.0) if latencies else None,
                "p99_ms": _percentile_of(latencies, 99.0) if latencies else None,
            }

    def finish(self) -> None:
        self.fold_before(math.inf)
        self.result.elapsed_s = max(0.0, self.last_end - self.measure_from)
        for part in self.result.parts.values():
            part.elapsed_s = self.result.elapsed_s
        last = max(self._done, default=-1)
        empty = {"ok": 0, "errors": 0, "p50_ms": None, "p99_ms": None}
        self.result.timeline = [self._done.get(s, {"second": s, **empty}) for s in range(last + 1)]


def _check_bounds(duration_s: float | None, count: int | None) -> None:
    if duration_s is None and count is None:
        raise ValueError("a load run needs a bound: duration_s or count")
    if duration_s is not None and duration_s <= 0:
        raise ValueError("duration_s must be positive")
    if count is not None and count <= 0:
        raise ValueError("count must be positive")


async def _run_one(
    call: Call, i: int, intended: float, recorder: _Recorder, loop: asyncio.AbstractEventLoop, label: Label | None
) -> None:
    error: BaseException | None = None
    try:
        await call(i)
    except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome, classified by code
        error = exc
    recorder.record(intended, loop.time(), error, label(i) if label else "")


async def _report_progress(
    progress: Progress, recorder: _Recorder, in_flight: Callable[[], int], loop: asyncio.AbstractEventLoop
) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = loop.time()
        result = recorder.result
        recorder.fold_before(int(now - recorder.measure_from) - 1)
        progress(
            Snapshot(
                phase="warmup" if now < recorder.measure_from else "measure",
                elapsed_s=now - recorder.measure_from,
                calls=result.calls,
                ok=result.ok,
                errors=sum(result.errors.values()),
                in_flight=in_flight(),
                p99_ms=result.percentile_ms(99.0),
                late_sends=result.late_sends,
            )
        )


async def _with_progress(
    body: Awaitable[None], progress: Progress | None, recorder: _Recorder, in_flight: Callable[[], int]
) -> None:
    loop = asyncio.get_running_loop()
    reporter = asyncio.create_task(_report_progress(progress, recorder, in_flight, loop)) if progress else None
    try:
        await body
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)


async def open_loop(
    call: Call,
    *,
    rate: float,
    duration_s: float | None = None,
    count: int | None = None,
    warmup_s: float = 0.0,
    max_in_flight: int = 10_000,
    progress: Progress | None = None,
    label: Label | None = None,
) -> LoadResult:
    """Send at `rate` calls/s; latency runs from each call's intended send time. `count` counts measured calls."""
    _check_bounds(duration_s, count)
    if rate <= 0:
        raise ValueError("rate must be positive")
    loop = asyncio.get_running_loop()
    result = LoadResult(mode="open", rate=rate)
    warmup_sends = math.ceil(warmup_s * rate)
    total = math.inf
    if count is not None:
        total = warmup_sends + count
    if duration_s is not None:
        total = min(total, warmup_sends + math.ceil(duration_s * rate))
    t0 = loop.time()
    recorder = _Recorder(result, measure_from=t0 + warmup_sends / rate)
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, intended: float) -> None:
        try:
            await _run_one(call, i, intended, recorder, loop, label)
        finally:
            slots.release()

    async def send_all() -> None:
        i = 0
        while i < total:
            intended = t0 + i / rate
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # catching up after a stall: let the calls already sent run meanwhile
            await slots.acquire()
            lag = loop.time() - intended
            if intended >= recorder.measure_from:
                result.max_send_lag_ms = max(result.max_send_lag_ms, lag * 1000.0)
                if lag > LATE_AFTER_S:
                    result.late_sends += 1
            task = asyncio.create_task(one(i, intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        while tasks:
            await asyncio.gather(*list(tasks))

    await _with_progress(send_all(), progress, recorder, lambda: len(tasks))
    recorder.finish()
    return result


async def closed_loop(
    call: Call,
    *,
    concurrency: int,
    duration_s: float | None = None,
    count: int | None = None,
    warmup_s: float = 0.0,
    progress: Progress | None = None,
    label: Label | None = None,
) -> LoadResult:
    """Keep `concurrency` calls in flight; each worker sends its next call when the last one answers."""
    _check_bounds(duration_s, count)
    if concurrency <= 0:
        raise ValueError("concurrency must be positive")
    loop = asyncio.get_running_loop()
    result = LoadResult(mode="closed", concurrency=concurrency)
    measure_from = loop.time() + warmup_s
    ends_at = measure_from + duration_s if duration_s is not None else math.inf
    recorder = _Recorder(result, measure_from=measure_from)
    claimed = 0  # measured calls handed out, so `count` is exact across workers
    next_index = 0
    busy = 0

    async def worker() -> None:
        nonlocal claimed, next_index, busy
        while True:
            started = loop.time()
            if started >= ends_at:
                return
            if started >= measure_from:
                if count is not None and claimed >= count:
                    return
                claimed += 1
            i = next_index
            next_index += 1
            busy += 1
            try:
                await _run_one(call, i, started, recorder, loop, label)
            finally:
                busy -= 1

    async def run_workers() -> None:
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    await _with_progress(run_workers(), progress, recorder, lambda: busy)
    recorder.finish()
    return result
