"""Emergency response to critical warnings, from durable state: freeze the payer's account through payments
and raise the payer's risk tier to HIGH through identity.

An incident row is written in the same transaction as the critical
assessment and the operator alert event. This worker (on every replica)
leases unfinished incidents, freezes the account and raises the tier with
idempotency keys derived from the incident, records each step as it
succeeds (frozen_at, tier_raised_at), and marks the incident done once both
are recorded and the alert event has reached notify. A crash anywhere in
between leaves the row unfinished: the next attempt repeats only the
unrecorded steps, with the same keys, which payments and identity answer as
replays, so each effect happens once per incident. A service that does not
answer is retried with backoff; one that refuses for good parks the incident
for an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.backoff import Backoff
from finmesh.platform.observability.logs import get_logger
from finmesh.risk.clients.refusals import Refused
from finmesh.risk.store import alerts

_log = get_logger("finmesh.risk.emergency")

Freeze = Callable[[str, str, float], Awaitable[None]]  # (account_id, idempotency_key, timeout)
RaiseTier = Callable[[str, str, float], Awaitable[None]]  # (user_id, idempotency_key, timeout)


def freeze_key(alert_id: str) -> str:
    return f"risk-incident-{alert_id}"


def tier_key(alert_id: str) -> str:
    return f"risk-incident-{alert_id}-tier"


STEP_BACKOFF = Backoff(base_seconds=0.5, max_seconds=60.0)


@dataclass(frozen=True)
class ResponsePolicy:
    poll_seconds: float = 1.0
    lease_seconds: float = 30.0
    call_timeout_seconds: float = 2.0
    # After a step failed: the base doubles with each failure of the incident so far (its `attempts`).
    backoff: Backoff = STEP_BACKOFF
    batch_size: int = 50


class EmergencyResponder:
    def __init__(
        self,
        engine: AsyncEngine,
        freeze: Freeze,
        policy: ResponsePolicy | None = None,
        *,
        raise_tier: RaiseTier | None = None,
    ) -> None:
        self._engine = engine
        self._freeze = freeze
        # None: no identity to tell (a deployment without FINMESH_IDENTITY_TARGET); incidents finish untiered.
        self._raise_tier = raise_tier
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
        timeout = self._policy.call_timeout_seconds
        # Steps that succeeded in this attempt, saved with whatever happens next so they are not repeated.
        progress: dict[str, Any] = {}
        if row.frozen_at is None:
            if not await self._step(
                row, progress, "freeze", lambda: self._freeze(row.account_id, freeze_key(row.alert_id), timeout)
            ):
                return 0
            progress["frozen_at"] = datetime.now(UTC)
            _log.info("emergency_account_frozen", alert_id=row.alert_id)
        if self._raise_tier is not None and row.user_id and row.tier_raised_at is None:
            raise_tier = self._raise_tier
            if not await self._step(
                row, progress, "tier", lambda: raise_tier(row.user_id, tier_key(row.alert_id), timeout)
            ):
                return 0
            progress["tier_raised_at"] = datetime.now(UTC)
            _log.info("emergency_tier_raised", alert_id=row.alert_id)
        async with self._engine.connect() as conn:
            alerted = await alerts.event_delivered(conn, row.event_id)
            await conn.rollback()
        if not alerted:
            # Acted on; the operator alert is still on its way through the outbox: look again soon.
            await self._settle(
                row.alert_id,
                **progress,
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=self._policy.poll_seconds),
            )
            return 0
        await self._settle(row.alert_id, **progress, emergency_response_done=True, last_error="")
        _log.info("emergency_response_done", alert_id=row.alert_id)
        return 1

    async def _step(self, row: Any, progress: dict[str, Any], step: str, call: Callable[[], Awaitable[None]]) -> bool:
        """Make one call; on failure record it (retry with backoff, or park on a final refusal) and say so."""
        try:
            await call()
        except Refused as refused:
            _log.error("emergency_step_refused", alert_id=row.alert_id, step=step, reason=refused.reason)
            await self._settle(row.alert_id, **progress, parked=True, last_error=refused.reason[:200])
            return False
        except Exception as error:  # noqa: BLE001 - the other service down or slow: retry later with the same key
            # Doubling stops at 20 failures, as it did before the schedule was shared (the cap is reached long
            # before with the default numbers).
            delay = self._policy.backoff.delay(min(row.attempts, 20))
            _log.warning(
                "emergency_step_retry",
                alert_id=row.alert_id,
                step=step,
                attempts=row.attempts + 1,
                error=type(error).__name__,
                retry_in_seconds=round(delay, 2),
            )
            await self._settle(
                row.alert_id,
                **progress,
                attempts=row.attempts + 1,
                last_error=f"{step}: {type(error).__name__}"[:200],
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
            )
            return False
        return True

    async def _settle(self, alert_id: str, **values: Any) -> None:
        async with self._engine.begin() as conn:
            await alerts.settle(conn, alert_id, **values)
