"""The load engines against fake calls: coordinated-omission correction, exact counts, warm-up left out."""

from __future__ import annotations

import asyncio
import io
import re
import time

import grpc
import pytest

from finmesh.load.engine import closed_loop, error_code, open_loop
from finmesh.load.progress import ProgressLine
from finmesh.load.scenarios import UnexpectedOutcome

STALL_S = 0.5


def stalling_call(stall_at: int, work_s: float = 0.002):
    """A call that takes `work_s`, except that call `stall_at` blocks the whole process for STALL_S once
    (a GC pause, a saturated client): the sends due meanwhile cannot leave on time."""
    stalled = False

    async def call(i: int) -> None:
        nonlocal stalled
        if i >= stall_at and not stalled:
            stalled = True
            time.sleep(STALL_S)  # blocks the event loop on purpose
        await asyncio.sleep(work_s)

    return call


async def test_open_loop_charges_a_stall_to_every_call_due_during_it() -> None:
    """100/s for 2 s with one 500 ms stall: ~50 sends were due during the stall; measured from their intended
    send times they waited up to 500 ms, so p99 shows the stall and they are counted as late sends."""
    shown = io.StringIO()
    result = await open_loop(
        stalling_call(stall_at=60), rate=100, count=200, warmup_s=0.2, progress=ProgressLine(shown)
    )
    assert result.calls == 200 and result.ok == 200
    assert re.search(r"ok/s  ok \d+  errors 0 .* p99 [1-9][\d.]* ms", shown.getvalue()), shown.getvalue()
    assert result.percentile_ms(99) >= 0.8 * STALL_S * 1000, result.latency_ms()
    # A tenth of the calls were due during the stall, so even p90 carries part of it.
    assert result.percentile_ms(90) >= 0.1 * STALL_S * 1000, result.latency_ms()
    assert result.late_sends >= 30, result.late_sends
    assert result.max_send_lag_ms >= 0.8 * STALL_S * 1000


async def test_closed_loop_hides_the_same_stall_in_one_sample() -> None:
    """The same stall seen by a closed loop: the sender just waits, so one sample of ~200 carries it and p99
    looks healthy. This is the coordinated omission the open loop corrects."""
    result = await closed_loop(stalling_call(stall_at=60, work_s=0.008), concurrency=1, count=200, warmup_s=0.1)
    assert result.calls == 200
    assert result.latency_ms()["max"] >= 0.8 * STALL_S * 1000
    assert result.percentile_ms(99) < 0.5 * STALL_S * 1000, result.latency_ms()


async def test_counts_add_up_and_warmup_is_left_out() -> None:
    calls: list[int] = []

    async def call(i: int) -> None:
        calls.append(i)
        await asyncio.sleep(0.001)
        if i % 10 == 3:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        if i % 10 == 7:
            raise UnexpectedOutcome("PAYMENT_STATUS_DECLINED")

    result = await closed_loop(call, concurrency=8, count=100, warmup_s=0.2)
    d = result.to_dict()
    assert d["calls"] == 100, d["calls"]  # exact, though eight workers race for the last ones
    assert len(calls) == d["calls"] + d["warmup_calls"] and d["warmup_calls"] > 0
    assert d["ok"] + d["error_count"] == d["calls"]
    assert set(d["errors"]) <= {"UNAVAILABLE", "PAYMENT_STATUS_DECLINED"} and d["errors"]["UNAVAILABLE"] > 0
    assert sum(row["ok"] for row in d["timeline"]) == d["ok"]
    assert sum(row["errors"] for row in d["timeline"]) == d["error_count"]
    assert [row["second"] for row in d["timeline"]] == list(range(len(d["timeline"])))
    assert set(d["latency_ms"]) == {"p50", "p90", "p99", "p99_9", "max", "mean"}
    assert d["latency_ms"]["p50"] <= d["latency_ms"]["p99"] <= d["latency_ms"]["max"]
    assert d["distribution"][-1]["percentile"] == 100.0 and d["histogram_hdr"]
    assert d["throughput"] == pytest.approx(d["ok"] / d["elapsed_s"], rel=1e-3)


async def test_open_loop_duration_bounds_the_run() -> None:
    async def call(i: int) -> None:
        await asyncio.sleep(0.001)

    started = time.monotonic()
    result = await open_loop(call, rate=50, duration_s=1.0)
    assert result.calls == 50 and time.monotonic() - started < 3.0
    assert error_code(ValueError("x")) == "ValueError"
    with pytest.raises(ValueError, match="bound"):
        await open_loop(call, rate=50)
