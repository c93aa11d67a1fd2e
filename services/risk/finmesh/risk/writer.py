"""The assessment writer: payment assessments run here, many at once in one transaction (group commit).

Callers submit a payment's facts and await its outcome. One task takes
whatever is queued and assesses it as one batch (assessing.assess_payments):
a few statements read the whole batch's velocity, devices and block-list
hits, the payments are decided in order in memory, and their rows are
inserted together and committed once. If a batch fails, it is committed again
without the payments that fail it (finmesh.platform.storage.group_commit): one bad
payment cannot fail its neighbours, and only its own caller gets the error.

Why: on SQLite a commit costs an fsync and writers take turns, and on both
databases an assessment was ~8 statements, each a round trip through
SQLAlchemy and the driver. Batching turns N commits into one and N x 8
statements into about 8.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as otel_context
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.group_commit import commit_apart
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread, write_thread_for
from finmesh.risk.domain.rules import Rules
from finmesh.risk.usecases.assessing import Outcome, PaymentFacts, assess_payments

_log = get_logger("finmesh.risk.writer")


@dataclass
class _Job:
    facts: PaymentFacts
    future: asyncio.Future[Outcome]
    queued_at: float
    trace: Any = field(default_factory=otel_context.get_current)


class AssessmentWriter:
    def __init__(self, engine: AsyncEngine, rules: Callable[[], Rules], *, max_batch: int = 128, lanes: int = 1,
                 linger_seconds: float = 0.0,
                 assess: Callable[..., Awaitable[list[Outcome]]] = assess_payments) -> None:
        # On an SQLite file each batch runs on a thread of its own: one hand-off per batch, not one per driver call.
        thread = write_thread_for(engine, "risk-sqlite-writer") if engine is not None else None
        self._database: AsyncEngine | SqliteWriteThread = thread or engine
        self._rules = rules  # the active rules, read when a batch starts
        self._assess = assess
        self._max_batch = max_batch
        # Batches in flight at once. One on SQLite (one writer at a time anyway); on PostgreSQL more let one
        # batch's round trips overlap another's: batches that share a payer wait on its row lock, as replicas do.
        self._lanes = lanes
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self.batches = 0  # for benchmarks and tests: how many transactions carried the assessments
        # Group commit under load: a batch may wait up to `linger_seconds` after its oldest assessment arrived
        # for more to join it, but only while assessments arrive often enough (on average at least one per two
        # lingers) that the wait pays: a transaction's fixed cost, ~1 ms of CPU, is then shared by more
        # payments. Light traffic never waits. In the mesh bench: 10 ms took batches from ~2.2 to ~3.7.
        self._linger = linger_seconds
        self._gap = math.inf  # moving average of the time between submissions
        self._last_submit: float | None = None

    def start(self) -> None:
        if not self._tasks or any(t.done() for t in self._tasks):
            # A context of its own: the tasks must not run inside the first caller's trace.
            self._tasks = [asyncio.create_task(self._run(), name=f"risk-assessment-writer-{i}",
                                               context=contextvars.Context()) for i in range(self._lanes)]

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Finish what is queued (up to `drain_seconds`), then stop; what is left is cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_seconds
        while ((self._queue or self._busy) and loop.time() < deadline and self._tasks
               and not all(t.done() for t in self._tasks)):
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self._queue:
            job.future.cancel()
        self._queue.clear()
        if isinstance(self._database, SqliteWriteThread):
            await self._database.close()

    async def submit(self, facts: PaymentFacts) -> Outcome:
        """Assess `facts` in the next batch; its outcome, or the error that failed it alone."""
        self.start()  # started on first use too, so an app that was never start()ed still answers
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last_submit is not None:
            gap = now - self._last_submit
            self._gap = gap if self._gap == math.inf else 0.8 * self._gap + 0.2 * gap
        self._last_submit = now
        job = _Job(facts, loop.create_future(), now)
        self._queue.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._linger_under_load()
            if not self._queue:
                continue  # another lane took them meanwhile
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._busy += 1
            try:
                await self._process(batch)
            except Exception:  # noqa: BLE001 - the writer must outlive any one batch
                _log.exception("assessment_batch_failed", size=len(batch))
            finally:
                self._busy -= 1

    async def _linger_under_load(self) -> None:
        if not self._linger or len(self._queue) >= self._max_batch or self._gap > 2 * self._linger:
            return
        wait = self._queue[0].queued_at + self._linger - asyncio.get_running_loop().time()
        if wait > 0:  # jobs that already waited for the previous batch do not wait again
            await asyncio.sleep(wait)

    async def _process(self, batch: list[_Job]) -> None:
        outcomes = await commit_apart(batch, self._commit, writer="risk-assessments")
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue  # the caller went away; the assessment stands and a retry gets it
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    async def _commit(self, batch: list[_Job]) -> list[Outcome]:
        outcomes = await self._assess(self._database, self._rules(), [j.facts for j in batch], datetime.now(UTC),
                                      [j.trace for j in batch])
        self.batches += 1
        return outcomes
