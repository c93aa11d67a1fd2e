"""Emergency response to critical warnings: freeze the payer's account through payments, from durable state.

An incident row is written in the same transaction as the critical
assessment and the operator alert event. This worker (on every replica)
leases unfinished incidents, freezes the account with an idempotency key
derived from the incident, and marks the incident done once the account is
frozen and the alert event has reached notify. A crash anywhere in between
leaves the row unfinished: the next attempt repeats the call with the same
key, which payments answers as a replay, so the freeze happens once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.logs import get_logger
from finmesh.risk.clients import FreezeRefused
from finmesh.risk.store import alerts

_log = get_logger("finmesh.risk.emergency")

Freeze = Callable[[str, str, float], Awaitable[None]]  # (account_id, idempotency_key, timeout)


def freeze_key(alert_id: str) -> str:
    return f"risk-incident-{alert_id}"


@dataclass(frozen=True)
class ResponsePolicy:
    poll_seconds: float = 1.0
    lease_seconds: float = 30.0
    call_timeout_seconds: float = 2.0
    base_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 60.0
    batch_size: int = 50

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter (attempts counts failures so far)."""
        ceiling = min(self.max_backoff_seconds, self.base_backoff_seconds * 2 ** min(attempts, 20))
        return random.uniform(ceiling / 2, ceiling)


class EmergencyResponder:
    def __init__(self, engine: AsyncEngine, freeze: Freeze, policy: ResponsePolicy | None = None) -> None:
        self._engine = engine
        self._freeze = freeze
        self._policy = policy or ResponsePolicy()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="risk-emergency-response")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.respond_once()
            except Exception:  # noqa: BLE001 - the worker must outlive a database hiccup; rows stay pending
                _log.exception("emergency_response_failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._policy.poll_seconds)

    async def respond_once(self) -> int:
        """Advance every due incident one step; return how many finished."""
        now = datetime.now(UTC)
        async with self._engine.connect() as conn:
            rows = await alerts.due(conn, now, self._policy.batch_size)
            await conn.rollback()
        finished = 0
        for row in rows:
            finished += await self._advance(row, now)
        return finished

    async def _advance(self, row: Any, now: datetime) -> int:
        lease = now + timedelta(seconds=self._policy.lease_seconds)
        async with self._engine.begin() as conn:
            if not await alerts.claim(conn, row.alert_id, now, lease):
                return 0  # another replica has it
        frozen_at = row.frozen_at
        if frozen_at is None:
            try:
                await self._freeze(row.account_id, freeze_key(row.alert_id), self._policy.call_timeout_seconds)
            except FreezeRefused as refused:
                _log.error("emergency_freeze_refused", alert_id=row.alert_id, reason=refused.reason)
                await self._settle(row.alert_id, parked=True, last_error=refused.reason[:200])
                return 0
            except Exception as error:  # noqa: BLE001 - payments down or slow: retry later with the same key
                delay = self._policy.backoff(row.attempts)
                _log.warning("emergency_freeze_retry", alert_id=row.alert_id, attempts=row.attempts + 1,
                             error=type(error).__name__, retry_in_seconds=round(delay, 2))
                await self._settle(row.alert_id, attempts=row.attempts + 1, last_error=type(error).__name__,
                                   next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay))
                return 0
            frozen_at = datetime.now(UTC)
            _log.info("emergency_account_frozen", alert_id=row.alert_id)
        async with self._engine.connect() as conn:
            alerted = await alerts.event_delivered(conn, row.event_id)
            await conn.rollback()
        if not alerted:
            # Frozen; the operator alert is still on its way through the outbox: look again soon.
            await self._settle(row.alert_id, frozen_at=frozen_at,
                               next_attempt_at=datetime.now(UTC) + timedelta(seconds=self._policy.poll_seconds))
            return 0
        await self._settle(row.alert_id, frozen_at=frozen_at, emergency_response_done=True, last_error="")
        _log.info("emergency_response_done", alert_id=row.alert_id)
        return 1

    async def _settle(self, alert_id: str, **values: Any) -> None:
        async with self._engine.begin() as conn:
            await alerts.settle(conn, alert_id, **values)
