"""Coalescer: single calls while few are out; what waits goes as one batch, each item with its own result."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from finmesh.platform.rpc.coalescing import Coalescer

caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class Callee:
    """Answers item * 10; an item < 0 is refused alone; `gate` holds every call until opened."""

    def __init__(self) -> None:
        self.singles: list[int] = []
        self.batches: list[list[int]] = []
        self.batch_callers: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_batches: Exception | None = None

    async def one(self, item: int, timeout: float) -> int:
        self.singles.append(item)
        await self.gate.wait()
        return item * 10

    async def many(
        self, items: list[int], contexts: list[contextvars.Context], timeout: float
    ) -> Sequence[int | BaseException]:
        self.batches.append(items)
        self.batch_callers.append([c.run(caller.get) for c in contexts])
        await self.gate.wait()
        if self.fail_batches is not None:
            raise self.fail_batches
        return [ValueError(f"refused {i}") if i < 0 else i * 10 for i in items]


async def _submit_as(coalescer: Coalescer[int, int], name: str, item: int, timeout: float = 5.0) -> int:
    caller.set(name)
    return await coalescer.submit(item, timeout)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _one_call_out(max_batch: int = 8) -> tuple[Callee, Coalescer[int, int], asyncio.Task[int]]:
    """A held callee, a coalescer that lets one call out, and that call (item 1) under way."""
    callee = Callee()
    callee.gate.clear()
    calls = Coalescer(callee.one, callee.many, max_in_flight=1, max_batch=max_batch)
    first = asyncio.create_task(_submit_as(calls, "a", 1))
    await _settle()
    return callee, calls, first


async def test_light_traffic_makes_single_calls_only() -> None:
    callee = Callee()
    calls = Coalescer(callee.one, callee.many, max_in_flight=2, max_batch=8)
    assert [await calls.submit(i, 5) for i in range(3)] == [0, 10, 20]
    assert await asyncio.gather(calls.submit(3, 5), calls.submit(4, 5)) == [30, 40]
    assert callee.singles == [0, 1, 2, 3, 4] and callee.batches == []


async def test_what_waits_goes_as_one_batch_each_with_its_own_result_and_caller_context() -> None:
    callee, calls, first = await _one_call_out()
    waiting = [asyncio.create_task(_submit_as(calls, name, item)) for name, item in [("b", 2), ("c", -3), ("d", 4)]]
    await _settle()
    assert callee.singles == [1] and callee.batches == []  # the others wait for the one call out
    callee.gate.set()
    assert await first == 10
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], ValueError) and str(results[1]) == "refused -3"
    assert callee.batches == [[2, -3, 4]]
    assert callee.batch_callers == [["b", "c", "d"]]
    assert (calls.batch_calls, calls.batched_items) == (1, 3)


async def test_batches_are_capped_and_all_waiting_items_are_answered() -> None:
    callee = Callee()
    callee.gate.clear()
    calls = Coalescer(callee.one, callee.many, max_in_flight=1, max_batch=3)
    tasks = [asyncio.create_task(calls.submit(i, 5)) for i in range(8)]
    await _settle()
    callee.gate.set()
    assert await asyncio.gather(*tasks) == [i * 10 for i in range(8)]
    assert callee.singles == [0]
    assert callee.batches == [[1, 2, 3], [4, 5, 6], [7]]


async def test_a_failed_batch_fails_each_of_its_items_and_the_next_callers_still_get_through() -> None:
    callee, calls, first = await _one_call_out()
    callee.fail_batches = ConnectionError("callee down")
    waiting = [asyncio.create_task(calls.submit(i, 5)) for i in (2, 3)]
    await _settle()
    callee.gate.set()
    assert await first == 10
    for task in waiting:
        with pytest.raises(ConnectionError):
            await task
    assert await calls.submit(9, 5) == 90  # the slot was given back


async def test_an_item_that_waits_past_its_timeout_times_out_and_is_left_out_of_the_batch() -> None:
    callee, calls, first = await _one_call_out()
    impatient = asyncio.create_task(calls.submit(2, 0.05))
    patient = asyncio.create_task(calls.submit(3, 5))
    with pytest.raises(TimeoutError):
        await impatient
    callee.gate.set()
    assert (await first, await patient) == (10, 30)
    assert callee.batches == [[3]]


async def test_close_cancels_what_waits() -> None:
    callee, calls, first = await _one_call_out()
    waiting = asyncio.create_task(calls.submit(2, 5))
    await _settle()
    await calls.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    callee.gate.set()
    assert await first == 10
    assert callee.batches == []
