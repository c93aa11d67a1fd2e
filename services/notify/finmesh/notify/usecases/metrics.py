"""Notify's metrics: what became of each send attempt (a counter), and what waits (gauges the background
sampler in finmesh.notify.usecases.backlog sets from the database)."""

from __future__ import annotations

from collections.abc import Iterable

from finmesh.platform.observability.metrics import meter

_meter = meter("finmesh.notify")

# What the send worker did with a message it claimed:
#   sent           the provider accepted it
#   retried        the attempt failed; another is scheduled
#   dead_lettered  failed for good (a permanent error, or the last attempt): parked for a redrive
#   suppressed     not sent on purpose: the recipient was erased, or opted out of marketing meanwhile
#   deferred       marketing inside the recipient's quiet hours: held until they end
SENT, RETRIED, DEAD_LETTERED, SUPPRESSED, DEFERRED = "sent", "retried", "dead_lettered", "suppressed", "deferred"
OUTCOMES = (SENT, RETRIED, DEAD_LETTERED, SUPPRESSED, DEFERRED)

_deliveries = _meter.create_counter(
    "finmesh.notify.deliveries", unit="{message}", description="Send attempts by channel and outcome"
)
queue_depth = _meter.create_gauge(
    "finmesh.notify.queue.depth", unit="{message}", description="Messages waiting to be sent, per lane"
)
queue_oldest_age = _meter.create_gauge(
    "finmesh.notify.queue.oldest_age",
    unit="s",
    description="Age of the oldest message waiting to be sent, per lane (0 when none waits)",
)
dead_letters = _meter.create_gauge(
    "finmesh.notify.dead_letters", unit="{message}", description="Dead letters not yet redriven, per channel"
)
complaints_overdue = _meter.create_gauge(
    "finmesh.notify.complaints.overdue",
    unit="{complaint}",
    description="Unresolved complaints past the deadline of the stage they are in",
)
complaints_due_soon = _meter.create_gauge(
    "finmesh.notify.complaints.due_soon",
    unit="{complaint}",
    description="Unresolved complaints whose next deadline falls within the next 4 hours",
)


def start_series(channels: Iterable[str]) -> None:
    """Every channel and outcome from the first scrape, so rate() and absent() work before traffic."""
    for channel in channels:
        for outcome in OUTCOMES:
            _deliveries.add(0, {"channel": channel, "outcome": outcome})


def delivered(channel: str, outcome: str) -> None:
    _deliveries.add(1, {"channel": channel, "outcome": outcome})
