"""Notify's events from the broker (FINMESH_EVENTS_TRANSPORT=rabbitmq): the same intake as DeliverEvents.

The platform consumer (finmesh.platform.messaging.rabbitmq.consumer) hands over what arrived; the events are
judged and taken exactly as a DeliverEvents call's (`take_events`: validation, dedupe by event id, one
transaction), and each result becomes the consumer's ack (delivered or duplicate), dead letter (refused) or
redelivery (deferred behind a refused event of its aggregate).
"""

from __future__ import annotations

from collections.abc import Sequence

from finmesh.common.v1 import event_pb2
from finmesh.notify.api.servicer import take_events
from finmesh.notify.usecases.intake import EventIntake
from finmesh.platform.messaging.event_sink import outcome_of
from finmesh.platform.messaging.rabbitmq.consumer import Binding, Handle
from finmesh.platform.messaging.relay import BatchOutcome

# Notify hears every event of every producer.
PRODUCERS = ("identity", "payments", "risk")
BINDINGS: list[Binding] = [(producer, "#") for producer in PRODUCERS]


def handler(intake: EventIntake) -> Handle:
    async def handle(events: Sequence[event_pb2.Event]) -> list[BatchOutcome]:
        return [outcome_of(result) for result in await take_events(intake, events)]

    return handle
