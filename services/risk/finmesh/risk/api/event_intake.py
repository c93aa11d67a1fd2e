"""EventIntakeService servicer (finmesh.common.v1): identity's user events from its outbox relay, into risk; and
the same intake for the broker's consumer (FINMESH_EVENTS_TRANSPORT=rabbitmq: `BINDINGS`, `handler`).

Envelope checks are the shared contract's (finmesh.platform.rpc.event_intake); then each event's payload is
read as risk reads it (finmesh.risk.domain.user_events): a payload that is not what its type promises is
REFUSED, and the later events of its aggregate DEFERRED, like a bad envelope. The rest go to the use case in
request order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from finmesh.common.v1 import event_intake_pb2 as pb
from finmesh.common.v1 import event_intake_pb2_grpc as pb_grpc
from finmesh.common.v1 import event_pb2
from finmesh.platform.errors import FieldViolation
from finmesh.platform.messaging.event_sink import intake_outcome_of
from finmesh.platform.messaging.rabbitmq.consumer import Binding, Handle
from finmesh.platform.messaging.relay import BatchOutcome
from finmesh.platform.rpc import event_intake
from finmesh.risk.domain.user_events import ERASED, TIER_CHANGED, VERIFIED, Problem, read
from finmesh.risk.store.user_profiles import Taken
from finmesh.risk.usecases.intake import IncomingEvent, UserEventIntake

# FINMESH_EVENTS_TRANSPORT=rabbitmq: risk's queues take these types from identity's exchange (on gRPC,
# identity's FINMESH_EVENTS_FILTERS names the same three).
BINDINGS: list[Binding] = [("identity", event_type) for event_type in (VERIFIED, TIER_CHANGED, ERASED)]


def handler(intake: UserEventIntake) -> Handle:
    """The broker consumer's handle: the events judged and taken exactly as a DeliverEvents call's."""

    async def handle(events: Sequence[event_pb2.Event]) -> list[BatchOutcome]:
        return [intake_outcome_of(result, "risk") for result in await take_events(intake, events)]

    return handle


class EventIntakeServicer(pb_grpc.EventIntakeServiceServicer):
    def __init__(self, intake: UserEventIntake) -> None:
        self._intake = intake

    async def DeliverEvents(self, request: pb.DeliverEventsRequest, context: grpc.aio.ServicerContext) -> Any:
        event_intake.check_batch(request.events)
        return pb.DeliverEventsResponse(results=await take_events(self._intake, request.events))


async def take_events(intake: UserEventIntake, events: Sequence[event_pb2.Event]) -> list[pb.EventResult]:
    """One result per event, in order: what DeliverEvents answers (and what a broker consumer would ack)."""
    results = event_intake.refusals(events)
    taken: list[tuple[int, IncomingEvent]] = []
    stopped: set[tuple[str, str]] = set()
    for i, event in enumerate(events):
        if i in results:
            continue
        aggregate = (event.source, event.aggregate_id)
        if aggregate in stopped:
            results[i] = event_intake.deferred(event)
            continue
        change = read(event.event_type, event.user_id, _flat(event))
        if isinstance(change, Problem):
            stopped.add(aggregate)
            results[i] = event_intake.refused(
                event, [FieldViolation(f"events[{i}].{change.field}", change.description)]
            )
            continue
        taken.append((i, IncomingEvent(_envelope(event), change)))
    duplicates = await intake.deliver_batch([e for _, e in taken]) if taken else []
    for (i, _), duplicate in zip(taken, duplicates, strict=True):
        results[i] = pb.EventResult(
            event_id=events[i].event_id,
            outcome=pb.EVENT_OUTCOME_DUPLICATE if duplicate else pb.EVENT_OUTCOME_DELIVERED,
        )
    return [results[i] for i in range(len(events))]


def _envelope(event: event_pb2.Event) -> Taken:
    return Taken(event.event_id, event.source, event.event_type, event.aggregate_id, event.sequence)


def _flat(event: event_pb2.Event) -> dict[str, str]:
    """The payload's top-level text values (identity's user events carry nothing else)."""
    payload = json_format.MessageToDict(event.payload)
    return {k: v for k, v in payload.items() if isinstance(v, str)}
