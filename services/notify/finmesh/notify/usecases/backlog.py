"""What waits in notify, sampled from its database for the gauges: the send queue per lane, the dead letters
per channel, and the complaints late or nearly late.

A scrape cannot await the database, so a background task (the app's, with
finmesh.platform.observability.metrics.sample_every) sets the gauges every metrics_sample_seconds. Each
query reads only what waits (queued messages, dead letters, unresolved complaints) through an index, so a
sample costs what the backlog is, not what notify ever sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.store import complaints, queue
from finmesh.notify.usecases import metrics
from finmesh.notify.usecases.clock import Clock
from finmesh.notify.usecases.worker import LANES
from finmesh.platform.storage.db import aware

# How far ahead a complaint's deadline counts as near: time enough for an operator to act on the alert.
DUE_SOON = timedelta(hours=4)


class Backlog:
    def __init__(self, engine: AsyncEngine, clock: Clock, channels: Iterable[str]) -> None:
        self._engine = engine
        self._clock = clock
        self._channels = tuple(channels)

    async def sample(self) -> None:
        """Read what waits and set the gauges; every lane and channel gets a value, 0 when nothing waits."""
        now = self._clock.now()
        async with self._engine.connect() as conn:
            lanes = await queue.waiting_by_lane(conn)
            letters = await queue.dead_lettered_by_channel(conn)
            overdue, due_soon = await complaints.deadline_counts(conn, now, now + DUE_SOON)
        for lane in dict.fromkeys((*LANES, *lanes)):
            depth, oldest = lanes.get(lane, (0, None))
            age = max((now - aware(oldest)).total_seconds(), 0.0) if oldest is not None else 0.0
            metrics.queue_depth.set(depth, {"lane": lane})
            metrics.queue_oldest_age.set(age, {"lane": lane})
        for channel in dict.fromkeys((*self._channels, *letters)):
            metrics.dead_letters.set(letters.get(channel, 0), {"channel": channel})
        metrics.complaints_overdue.set(overdue)
        metrics.complaints_due_soon.set(due_soon)
