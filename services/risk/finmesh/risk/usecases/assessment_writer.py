"""The assessment writer: payment assessments run here, many at once in one transaction (group commit).

Callers submit a payment's facts and await its outcome. The platform's group-commit writer
(finmesh.platform.storage.group_commit) takes whatever is queued and this writer assesses it as one batch
(assessing.assess_payments): a few statements read the whole batch's velocity, devices and block-list
hits, the payments are decided in order in memory, and their rows are inserted together and committed
once. If a batch fails, it is committed again without the payments that fail it: one bad payment cannot
fail its neighbours, and only its own caller gets the error.

Why: on SQLite a commit costs an fsync and writers take turns, and on both
databases an assessment was ~8 statements, each a round trip through
SQLAlchemy and the driver. Batching turns N commits into one and N x 8
statements into about 8.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.storage.group_commit import GroupCommitWriter
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread, write_thread_for
from finmesh.risk.domain.rules import Rules
from finmesh.risk.usecases import assessment_metrics
from finmesh.risk.usecases.assessing import Outcome, PaymentFacts, assess_payments


class AssessmentWriter(GroupCommitWriter[PaymentFacts, Outcome]):
    def __init__(
        self,
        engine: AsyncEngine,
        rules: Callable[[], Rules],
        *,
        max_batch: int = 128,
        lanes: int = 1,
        linger_seconds: float = 0.0,
        assess: Callable[..., Awaitable[list[Outcome]]] = assess_payments,
    ) -> None:
        # Lanes: one on SQLite (one writer at a time anyway); on PostgreSQL more let one batch's round trips
        # overlap another's: batches that share a payer wait on its row lock, as replicas do. Lingering under
        # load shares a transaction's fixed cost, ~1 ms of CPU, among more payments.
        super().__init__(
            "risk-assessment", self._assess_batch, max_batch=max_batch, lanes=lanes, linger_seconds=linger_seconds
        )
        # On an SQLite file each batch runs on a thread of its own: one hand-off per batch, not one per driver call.
        thread = write_thread_for(engine, "risk-sqlite-writer") if engine is not None else None
        self._database: AsyncEngine | SqliteWriteThread = thread or engine
        self._rules = rules  # the active rules, read when a batch starts
        self._assess = assess

    async def submit(self, item: PaymentFacts) -> Outcome:
        """Assess `item` in the next batch; its outcome, or the error that failed it alone."""
        self.start()  # started on first use too, so an app that was never start()ed still answers
        return await super().submit(item)

    async def stop(self, drain_seconds: float = 5.0) -> None:
        """Finish what is queued (up to `drain_seconds`), then stop; what is left is cancelled."""
        await super().stop(drain_seconds)
        if isinstance(self._database, SqliteWriteThread):
            await self._database.close()

    async def _assess_batch(self, batch: list[PaymentFacts], traces: list[Any]) -> list[Outcome]:
        # The callers' traces: the alert event a payment raises carries its caller's trace.
        outcomes = await self._assess(self._database, self._rules(), batch, datetime.now(UTC), traces)
        # Only now, committed: a batch that failed is committed again in halves and counted there.
        assessment_metrics.committed_batch(len(batch))
        assessment_metrics.assessed(o.row for o in outcomes if o.fresh)
        return outcomes
