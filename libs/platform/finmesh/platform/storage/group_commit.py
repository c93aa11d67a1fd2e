"""Group commit that one bad item cannot fail: a failed batch is committed again without the items that fail it.

A group-commit writer (payments' ledger writer, risk's assessment writer) runs many callers' work in one
transaction, so one row the database refuses (a NUL character PostgreSQL's text cannot hold, a constraint
a bug violates) rolls back everyone's. commit_apart commits a batch as it came; only if that transaction
fails for a reason that may belong to one of its items does it split the batch in halves and commit each
(splitting again any half that fails), in order, so the good items commit in the order they arrived and
each item that fails alone gets the error for itself.

Halves, not each item alone: a batch of N with one bad item then takes about 2·log2(N) transactions instead
of N, each a commit (an fsync) on the writer's path while new work queues behind it. Measured (bench.poisoned,
256 payments with one refused): 8 commits and 0.6 s until every caller had its answer on a SQLite file,
against 255 and 3.5 s each alone; on PostgreSQL 1.6 s against 15 s. The cost: a batch whose every item
fails takes 2N - 1 transactions instead of N + 1, all of them rolled back (no fsync).

A transient failure (the database unreachable, finmesh.platform.storage.db.is_transient) is no item's fault and
splitting would only queue transaction after transaction behind an outage: every item of the failed batch
gets it at once, and its caller retries with the same idempotency key. Committing an item again never
doubles it: a writer records an item's idempotency answer in the same transaction as its change, and a
transaction that failed left neither.

GroupCommitWriter is the writer itself, the same for every service: callers submit an item and await its
result; lanes of tasks take what is queued (lingering for more while items arrive often), commit it as one
batch through the service's own transaction function, and hand each caller its result or its error. The
service's writer keeps only what is its own: what one batch's transaction does.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from opentelemetry import context as otel_context

from finmesh.platform.errors import FieldViolation, InvalidArgument
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import failure_facts, is_refused_value, is_transient

T = TypeVar("T")
R = TypeVar("R")

_log = get_logger("finmesh.platform.storage.group_commit")

UNSTORABLE = "holds a value that cannot be stored (such as a NUL character, or an unpaired surrogate in text)"


async def commit_apart(
    items: Sequence[T], commit: Callable[[list[T]], Awaitable[Sequence[R]]], *, writer: str
) -> list[R | Exception]:
    """`commit(items)`'s results, one per item; if its transaction fails, the items' own: each item's
    result from a smaller transaction that committed, or the error that failed it alone.

    An item the database could not store gets InvalidArgument (its caller sent what no database here
    holds); any other failure of one item is handed over as raised, to be answered as the bug it is.
    `writer` names the writer in the log lines.
    """
    try:
        return list(await commit(list(items)))
    except Exception as error:  # noqa: BLE001 - split below, or handed to the items' callers
        if is_transient(error):
            return [error] * len(items)
        if len(items) == 1:
            return [_alone(error, writer)]
        _log.warning("group_commit_split", writer=writer, size=len(items), **failure_facts(error))
    middle = len(items) // 2
    first = await commit_apart(items[:middle], commit, writer=writer)
    return first + await commit_apart(items[middle:], commit, writer=writer)


def _alone(error: Exception, writer: str) -> Exception:
    """The error for the caller of an item whose transaction failed with it alone."""
    if not is_refused_value(error):
        return error
    # No text from the database or the item: the one would carry the SQL's parameters, the other the input.
    _log.warning("group_commit_item_refused", writer=writer, **failure_facts(error))
    refused = InvalidArgument(FieldViolation("request", UNSTORABLE))
    refused.__cause__ = error
    return refused


# One batch's transaction: the items' results in order (a value, or the exception its caller gets), given the
# items and their callers' trace contexts; it raises when the transaction failed (commit_apart then splits).
CommitBatch = Callable[[list[T], list[otel_context.Context]], Awaitable[Sequence[R | BaseException]]]


class Split(Protocol):
    """How a batch is committed around its transaction: commit_apart (bench.poisoned swaps in the old way)."""

    def __call__(
        self, items: Sequence[T], commit: Callable[[list[T]], Awaitable[Sequence[R]]], *, writer: str
    ) -> Awaitable[list[R | Exception]]: ...


@dataclass(eq=False, slots=True)
class _Job(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float
    trace: otel_context.Context
    exclusive: bool


class GroupCommitWriter(Generic[T, R]):
    """Runs many callers' items in one transaction each batch: submit() an item, await its result.

    `commit_batch` is the service's part: one batch in one transaction. `exclusive(item)` true puts an item
    in a batch of its own (it must see every earlier change committed). `lanes` batches may be in flight at
    once: one on SQLite (one writer at a time anyway); on PostgreSQL more let one batch's round trips overlap
    another's. `name` names the writer's tasks and log lines.
    """

    def __init__(
        self,
        name: str,
        commit_batch: CommitBatch[T, R],
        *,
        max_batch: int,
        lanes: int = 1,
        linger_seconds: float = 0.0,
        exclusive: Callable[[T], bool] | None = None,
    ) -> None:
        self.name = name
        self._commit_batch = commit_batch
        self._max_batch = max_batch
        self._lanes = lanes
        self._exclusive = exclusive
        self.split: Split = commit_apart
        self._queue: collections.deque[_Job[T, R]] = collections.deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self.batches = 0  # for benchmarks and tests: how many transactions carried the items
        # Group commit under load: a batch may wait up to `linger_seconds` after its oldest item arrived for
        # more to join it, but only while items arrive often enough (on average at least one per two lingers)
        # that the wait pays: a transaction's fixed cost is then shared by more items. Light traffic never
        # waits. (Risk's assessments in the mesh bench: 10 ms took batches from ~2.2 to ~3.7.)
        self._linger = linger_seconds
        self._gap = math.inf  # moving average of the time between submissions
        self._last_submit: float | None = None

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    def start(self) -> None:
        if not self.running:
            # A context of their own: the lanes must not run inside the trace of whoever started them.
            self._tasks = [
                asyncio.create_task(self._run(), name=f"{self.name}-writer-{lane}", context=contextvars.Context())
                for lane in range(self._lanes)
            ]

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Finish what is queued (up to `drain_seconds`), then stop; what is left is cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while (self._queue or self._busy) and loop.time() < deadline and self.running:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self._queue:
            job.future.cancel()
        self._queue.clear()

    async def submit(self, item: T) -> R:
        """Run `item` in the next batch; its result, or its error raised."""
        if not self.running:
            raise RuntimeError(f"{self.name} writer is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._linger:
            if self._last_submit is not None:
                gap = now - self._last_submit
                self._gap = gap if self._gap == math.inf else 0.8 * self._gap + 0.2 * gap
            self._last_submit = now
        future: asyncio.Future[R] = loop.create_future()
        job = _Job(item, future, now, otel_context.get_current(), self._exclusive is not None and self._exclusive(item))
        self._queue.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._linger:
                await self._linger_under_load()
                if not queue:
                    continue  # another lane took them meanwhile
            batch = self._take()
            self._busy += 1
            try:
                await self._process(batch)
            except Exception as error:  # noqa: BLE001 - the writer must outlive any one batch
                _log.exception("group_commit_batch_failed", writer=self.name, size=len(batch))
                _settle(batch, error)
            except asyncio.CancelledError:
                _settle(batch, None)  # stopped mid-batch: its callers are cancelled, not left waiting
                raise
            finally:
                self._busy -= 1

    async def _linger_under_load(self) -> None:
        if len(self._queue) >= self._max_batch or self._gap > 2 * self._linger:
            return
        wait = self._queue[0].queued_at + self._linger - asyncio.get_running_loop().time()
        if wait > 0:  # items that already waited for the previous batch do not wait again
            await asyncio.sleep(wait)

    def _take(self) -> list[_Job[T, R]]:
        queue = self._queue
        first = queue.popleft()
        batch = [first]
        if first.exclusive:
            return batch
        while queue and len(batch) < self._max_batch and not queue[0].exclusive:
            batch.append(queue.popleft())
        return batch

    async def _process(self, batch: list[_Job[T, R]]) -> None:
        # A row the database refuses fails only its own item; a dropped connection fails all at once (each
        # caller gets the error and retries with its key).
        results = await self.split(batch, self._commit, writer=self.name)
        for job, result in zip(batch, results, strict=True):
            if job.future.done():
                continue  # the caller went away; the change stands and a retry with its key finds it
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    async def _commit(self, batch: list[_Job[T, R]]) -> Sequence[R | BaseException]:
        results = await self._commit_batch([job.item for job in batch], [job.trace for job in batch])
        self.batches += 1
        return results


def _settle(batch: list[_Job[T, R]], error: Exception | None) -> None:
    """Give the callers still waiting on `batch` `error` (None: cancel them)."""
    for job in batch:
        if not job.future.done():
            if error is None:
                job.future.cancel()
            else:
                job.future.set_exception(error)
