"""Background sending: one lane per category, retries with backoff and jitter, dead letters after N attempts.

Each lane has its own task and concurrency, so a marketing backlog never
delays a one-time code. Messages are claimed with a lease (FOR UPDATE SKIP
LOCKED on PostgreSQL), so several notify replicas share the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.clients.senders import Outgoing, Sender, SendError
from finmesh.notify.config import NotifySettings
from finmesh.notify.domain.consent import decide_marketing
from finmesh.notify.store import consents, queue
from finmesh.notify.store import webhooks as webhook_store
from finmesh.notify.usecases import erasure, metrics
from finmesh.notify.usecases.clock import Clock
from finmesh.notify.usecases.compose import Composer
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.telemetry import extract_context
from finmesh.platform.storage.db import aware

_log = get_logger("finmesh.notify.worker")
_tracer = trace.get_tracer("finmesh.notify")

LANES = ("SECURITY", "TRANSACTIONAL", "MARKETING")


class DeliveryWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        composer: Composer,
        senders: dict[str, Sender],
        settings: NotifySettings,
        clock: Clock,
    ) -> None:
        self._engine = engine
        self._composer = composer
        self._senders = senders
        self._settings = settings
        self._clock = clock
        self._wakes = {lane: asyncio.Event() for lane in LANES}
        self._tasks: list[asyncio.Task[None]] = []
        self._in_hand: set[str] = set()  # claimed, not yet settled
        self._concurrency = {
            "SECURITY": settings.security_concurrency,
            "TRANSACTIONAL": settings.transactional_concurrency,
            "MARKETING": settings.marketing_concurrency,
        }

    def start(self) -> None:
        metrics.start_series(self._senders)
        self._tasks = [asyncio.create_task(self._run(lane), name=f"notify-{lane.lower()}") for lane in LANES]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await queue.release(self._engine, sorted(self._in_hand), self._clock.now())
        except Exception:  # noqa: BLE001 - best effort: the lease runs out anyway
            _log.warning("notify_release_failed", claimed=len(self._in_hand))
        self._in_hand.clear()

    def wake(self, lane: str) -> None:
        if lane in self._wakes:
            self._wakes[lane].set()

    async def _run(self, lane: str) -> None:
        while True:
            try:
                handled = await self.drain_once(lane)
            except Exception:  # noqa: BLE001 - the worker must outlive a database hiccup
                _log.exception("notify_lane_failed", lane=lane)
                handled = 0
            if handled:
                continue
            self._wakes[lane].clear()
            timeout = await self._idle_wait(lane)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakes[lane].wait(), timeout)

    async def _idle_wait(self, lane: str) -> float:
        """Until the lane's next message is due, at most one poll interval."""
        poll = self._settings.worker_poll_seconds
        due = await queue.next_due(self._engine, lane)
        if due is None:
            return poll
        due = aware(due)
        return min(poll, max((due - self._clock.now()).total_seconds(), 0.01))

    async def drain_once(self, lane: str) -> int:
        """Send every due message of one lane once; return how many were handled."""
        limit = self._concurrency[lane] * 4
        rows = await queue.claim(self._engine, lane, self._clock.now(), limit, self._settings.worker_lease_seconds)
        gate = asyncio.Semaphore(self._concurrency[lane])

        self._in_hand.update(row.notification_id for row in rows)

        async def one(row: Any) -> None:
            async with gate:
                await self._send(row)
            self._in_hand.discard(row.notification_id)

        await asyncio.gather(*(one(row) for row in rows))
        return len(rows)

    async def _send(self, row: Any) -> None:
        link = trace.get_current_span(extract_context({"traceparent": row.traceparent})).get_span_context()
        with _tracer.start_as_current_span(
            f"notify send {row.channel.lower()}",
            kind=trace.SpanKind.CLIENT,
            links=[trace.Link(link)] if link.is_valid else None,
            attributes={
                "notify.notification_id": row.notification_id,
                "notify.channel": row.channel,
                "notify.category": row.category,
                "notify.attempt": row.attempts + 1,
            },
        ) as span:
            if row.channel != "WEBHOOK" and await erasure.withdrawn_at_send(self._engine, row):
                metrics.delivered(row.channel, metrics.SUPPRESSED)
                return
            if row.category == "MARKETING" and not await self._marketing_still_allowed(row):
                return
            attempts = row.attempts + 1
            try:
                await self._senders[row.channel].send(await self._open(row))
            except SendError as error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                await self._failed(row, attempts, str(error), error.permanent)
                return
            except Exception as error:  # noqa: BLE001 - a sender bug must not kill the lane; retried
                _log.exception("notify_send_crashed", notification_id=row.notification_id)
                await self._failed(row, attempts, type(error).__name__, False)
                return
            await queue.mark_sent(self._engine, row.notification_id, attempts, self._clock.now())
            metrics.delivered(row.channel, metrics.SENT)
            _log.info("notification_sent", notification_id=row.notification_id, channel=row.channel, attempts=attempts)

    async def _open(self, row: Any) -> Outgoing:
        if row.channel != "WEBHOOK":
            return self._composer.outgoing(row)
        async with self._engine.connect() as conn:
            hook = await webhook_store.get(conn, row.webhook_id)
        if hook is None or not hook.active:
            raise SendError("webhook no longer registered", permanent=True)
        sealer = self._composer.sealer
        return self._composer.outgoing(
            row,
            url=sealer.open(f"{hook.webhook_id}:url", hook.url_sealed),
            secret=sealer.open(f"{hook.webhook_id}:secret", hook.secret_sealed),
        )

    async def _marketing_still_allowed(self, row: Any) -> bool:
        """Consent is checked again at send time: an opt-out while the message waited wins."""
        async with self._engine.connect() as conn:
            record = consents.to_record(await consents.get(conn, row.user_id, "MARKETING"))
        decision = decide_marketing(record, self._clock.now())
        if not decision.send:
            await queue.mark_failed(self._engine, row.notification_id, decision.refusal)
            metrics.delivered(row.channel, metrics.SUPPRESSED)
            _log.info("notification_withdrawn", notification_id=row.notification_id, reason=decision.refusal)
            return False
        if decision.not_before is not None:
            await queue.defer(self._engine, row.notification_id, decision.not_before)
            metrics.delivered(row.channel, metrics.DEFERRED)
            return False
        return True

    async def _failed(self, row: Any, attempts: int, error: str, permanent: bool) -> None:
        policy = self._settings.retry_policy(row.channel)
        if permanent or policy.exhausted(attempts):
            await queue.dead_letter(self._engine, row.notification_id, row.channel, attempts, error, self._clock.now())
            metrics.delivered(row.channel, metrics.DEAD_LETTERED)
            _log.warning(
                "notification_dead_lettered",
                notification_id=row.notification_id,
                channel=row.channel,
                attempts=attempts,
                permanent=permanent,
                error=error,
            )
            return
        retry_at = self._clock.now() + timedelta(seconds=policy.delay(attempts))
        await queue.schedule_retry(self._engine, row.notification_id, attempts, retry_at, error)
        metrics.delivered(row.channel, metrics.RETRIED)
        _log.info(
            "notification_retry_scheduled",
            notification_id=row.notification_id,
            channel=row.channel,
            attempts=attempts,
            error=error,
        )
