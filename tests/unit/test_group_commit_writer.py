"""GroupCommitWriter: the one group-commit writer both services' writers are made of."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace

from finmesh.platform.storage.group_commit import GroupCommitWriter


class Batches:
    """A fake batch transaction: records each batch (and its traces); an item named "bad" fails the batch, an
    item named "refused" is answered with an error of its own."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.batches: list[list[str]] = []
        self.traces: list[list[Any]] = []

    async def commit(self, items: list[str], traces: list[Any]) -> list[str | BaseException]:
        self.batches.append(list(items))
        self.traces.append(list(traces))
        await asyncio.sleep(self.pause)
        if "bad" in items:
            raise RuntimeError("this item breaks its batch")
        return [ValueError(item) if item == "refused" else f"ok {item}" for item in items]


async def test_items_submitted_together_share_a_transaction_and_each_caller_gets_its_own_answer() -> None:
    fake = Batches(pause=0.01)
    writer = GroupCommitWriter("test", fake.commit, max_batch=10)
    writer.start()
    try:
        first = asyncio.create_task(writer.submit("first"))
        await asyncio.sleep(0)  # the first goes alone: nothing else was queued
        results = await asyncio.gather(
            first, *(writer.submit(i) for i in ["a", "refused", "b"]), return_exceptions=True
        )
        assert [str(r) for r in results] == ["ok first", "ok a", "refused", "ok b"]
        assert isinstance(results[2], ValueError)
        assert fake.batches == [["first"], ["a", "refused", "b"]]
        assert writer.batches == 2
    finally:
        await writer.stop()


async def test_a_failing_batch_is_committed_in_halves_and_only_its_culprit_fails() -> None:
    fake = Batches(pause=0.01)
    writer = GroupCommitWriter("test", fake.commit, max_batch=10)
    writer.start()
    try:
        results = await asyncio.gather(*(writer.submit(i) for i in ["a", "b", "bad", "c"]), return_exceptions=True)
        assert [str(r) for r in results] == ["ok a", "ok b", "this item breaks its batch", "ok c"]
        assert fake.batches == [["a", "b", "bad", "c"], ["a", "b"], ["bad", "c"], ["bad"], ["c"]]
        assert writer.batches == 2  # the transactions that committed: ["a", "b"] and ["c"]
    finally:
        await writer.stop()


async def test_an_exclusive_item_goes_in_a_batch_of_its_own_and_max_batch_bounds_the_rest() -> None:
    fake = Batches()
    writer = GroupCommitWriter("test", fake.commit, max_batch=2, exclusive=lambda item: item.startswith("!"))
    writer.start()
    try:
        await asyncio.gather(*(writer.submit(i) for i in ["a", "b", "c", "!x", "d", "e"]))
        assert fake.batches == [["a", "b"], ["c"], ["!x"], ["d", "e"]]
    finally:
        await writer.stop()


async def test_each_item_carries_its_callers_trace_context_and_the_lanes_run_in_none() -> None:
    fake = Batches()
    seen_in_batch: list[Any] = []

    async def commit(items: list[str], traces: list[Any]) -> list[str | BaseException]:
        seen_in_batch.append(trace.get_current_span().get_span_context())
        return await fake.commit(items, traces)

    tracer = trace.get_tracer("test")
    writer = GroupCommitWriter("test", commit, max_batch=10)
    with tracer.start_as_current_span("starter"):
        writer.start()
    try:
        context = trace.set_span_in_context(
            trace.NonRecordingSpan(trace.SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=trace.TraceFlags(1)))
        )
        token = otel_context.attach(context)
        try:
            assert await writer.submit("traced") == "ok traced"
        finally:
            otel_context.detach(token)
        assert trace.get_current_span(fake.traces[0][0]).get_span_context().trace_id == 0x1234
        assert not seen_in_batch[0].is_valid
    finally:
        await writer.stop()


async def test_a_writer_lingers_for_more_only_while_items_arrive_often() -> None:
    fake = Batches()
    writer = GroupCommitWriter("test", fake.commit, max_batch=10, linger_seconds=0.2)
    writer.start()
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        assert await writer.submit("quiet") == "ok quiet"
        assert loop.time() - started < 0.15  # nothing suggested more were coming

        async def later(i: int) -> str | BaseException:
            await asyncio.sleep(0.02 * i)
            return await writer.submit(str(i))

        await asyncio.gather(*(later(i) for i in range(1, 7)))
        assert len(fake.batches) < 6, fake.batches
    finally:
        await writer.stop()


async def test_stop_drains_the_queue_and_refuses_later_submissions() -> None:
    fake = Batches(pause=0.01)
    writer = GroupCommitWriter("test", fake.commit, max_batch=2, lanes=2)
    writer.start()
    pending = [asyncio.create_task(writer.submit(str(i))) for i in range(5)]
    await asyncio.sleep(0)
    await writer.stop()
    assert [await p for p in pending] == [f"ok {i}" for i in range(5)]
    with pytest.raises(RuntimeError, match="test writer is not running"):
        await writer.submit("late")


async def test_what_stop_could_not_drain_is_cancelled() -> None:
    fake = Batches(pause=10)
    writer = GroupCommitWriter("test", fake.commit, max_batch=1)
    writer.start()
    pending = [asyncio.create_task(writer.submit(str(i))) for i in range(2)]
    await asyncio.sleep(0.01)
    await writer.stop(drain_seconds=0.05)
    for task in pending:
        with pytest.raises(asyncio.CancelledError):
            await task
