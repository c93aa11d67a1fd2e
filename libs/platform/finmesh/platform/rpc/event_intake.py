"""Serving finmesh.common.v1.EventIntakeService: what every consumer checks before it takes events.

The same contract as notify's DeliverEvents (finmesh.notify.api.validate): at most MAX_EVENTS per call; each
event judged on its own, so a bad one is REFUSED with its fields named by position and the later events of
its aggregate DEFERRED (taking them would break the aggregate's order), while the rest go on. What is left
is the consumer's: dedupe by event id and apply, in request order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized

from google.protobuf import timestamp_pb2

from finmesh.common.v1 import event_intake_pb2 as pb
from finmesh.common.v1 import event_pb2
from finmesh.platform.errors import FieldViolation, Validator
from finmesh.platform.rpc.field_rules import checker_for
from finmesh.platform.rpc.guard import excerpt

# Events per DeliverEvents call (the contract's bound; relays split bigger rounds).
MAX_EVENTS = 500
_EVENT_RULES = checker_for(event_pb2.Event.DESCRIPTOR)
# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range google.protobuf.Timestamp defines.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def check_batch(events: Sized) -> None:
    """The request's events as a whole (INVALID_ARGUMENT); each event is judged on its own by not_taken()."""
    v = Validator()
    v.require(0 < len(events) <= MAX_EVENTS, "events", f"between 1 and {MAX_EVENTS} events")
    v.raise_if_any()


def event_violations(e: event_pb2.Event, name: str, *, ordered: bool = True) -> list[FieldViolation]:
    """What is wrong with one event's envelope, its fields named under `name` ("event", "events[3]").
    `ordered`: the consumer applies events in order per aggregate, so it needs the aggregate and position
    (notify, which only reacts to each event, takes them without)."""
    v = Validator()
    v.require(bool(e.event_id), f"{name}.event_id", "required")
    v.require(bool(e.source), f"{name}.source", "required")
    v.require(bool(e.event_type), f"{name}.event_type", "required")
    if ordered:
        v.require(bool(e.aggregate_id), f"{name}.aggregate_id", "required")
        v.require(e.sequence > 0, f"{name}.sequence", "a positive position in the aggregate")
    # Within google.protobuf.Timestamp's own range: outside it the event cannot be written as JSON (webhook
    # bodies, intake), and a producer sending it is broken.
    v.require(_valid_timestamp(e.occurred_at), f"{name}.occurred_at", "not a valid timestamp")
    # The bounds the contract declares on Event (the guard leaves DeliverEvents' items to this check).
    return v.violations + _EVENT_RULES.violations(e, f"{name}.")


def not_taken(
    events: Sequence[event_pb2.Event], violations_of: Callable[[event_pb2.Event, str], list[FieldViolation]]
) -> dict[int, list[FieldViolation]]:
    """The events not to take, by position: an invalid one with its violations, and every later event of its
    aggregate with none (deferred: taking it would put the aggregate's events out of order)."""
    stopped: set[tuple[str, str]] = set()
    found: dict[int, list[FieldViolation]] = {}
    for i, event in enumerate(events):
        aggregate = (event.source, event.aggregate_id)
        if aggregate in stopped:
            found[i] = []
        elif violations := violations_of(event, f"events[{i}]"):
            stopped.add(aggregate)
            found[i] = violations
    return found


def refused(event: event_pb2.Event, violations: Sequence[FieldViolation]) -> pb.EventResult:
    return pb.EventResult(
        event_id=excerpt(event.event_id, 64),
        outcome=pb.EVENT_OUTCOME_REFUSED,
        field_violations=[pb.EventFieldViolation(field=v.field, description=v.description) for v in violations],
    )


def refusals(events: Sequence[event_pb2.Event]) -> dict[int, pb.EventResult]:
    """Results of the events not taken for their envelope, by position: the invalid ones, and every later
    event of their aggregate."""
    return {
        i: refused(events[i], violations) if violations else deferred(events[i])
        for i, violations in not_taken(events, event_violations).items()
    }


def deferred(event: event_pb2.Event) -> pb.EventResult:
    return pb.EventResult(event_id=excerpt(event.event_id, 64), outcome=pb.EVENT_OUTCOME_DEFERRED)


def _valid_timestamp(moment: timestamp_pb2.Timestamp) -> bool:
    return _MIN_SECONDS <= moment.seconds <= _MAX_SECONDS and 0 <= moment.nanos < 1_000_000_000
