"""An outbox row becomes the same Event protobuf's own helpers would build, and its traceparent the same span."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from opentelemetry import trace

from finmesh.common.v1 import event_pb2
from finmesh.platform.messaging.outbox import row_to_event
from finmesh.platform.messaging.relay import _span_context
from finmesh.platform.observability.telemetry import extract_context

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PAYLOAD = {
    "amount_minor_units": 10**18 + 1,
    "negative": -5,
    "synthetic": True,
    "flag": False,
    "none": None,
    "ratio": 1.5,
    "text": "扣费",
    "nested": {"minor_units": 2, "items": [1, "z", False, None, {"q": 3}]},
    "empty_list": [],
    "empty_map": {},
}


def _reference(row: SimpleNamespace) -> event_pb2.Event:
    """Struct.update over integers as decimal text, Timestamp.FromDatetime: what the relay always sent."""

    def plain(value):  # type: ignore[no-untyped-def]
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return str(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    occurred = timestamp_pb2.Timestamp()
    occurred.FromDatetime(row.occurred_at if row.occurred_at.tzinfo else row.occurred_at.replace(tzinfo=UTC))
    payload = struct_pb2.Struct()
    payload.update(plain(row.payload))
    return event_pb2.Event(
        event_id=row.event_id,
        source="payments",
        event_type=row.event_type,
        aggregate_id=row.aggregate_id,
        sequence=row.sequence,
        occurred_at=occurred,
        payload=payload,
        traceparent=row.traceparent,
        tracestate=row.tracestate,
        user_id=row.user_id,
    )


@pytest.mark.parametrize(
    "occurred_at",
    [
        datetime(2026, 11, 26, 9, 30, 1, 123456, tzinfo=UTC),
        datetime(2026, 11, 26, 9, 30, 1, 7),  # SQLite hands back naive UTC
        datetime(2026, 11, 26, 17, 30, 1, 999999, tzinfo=timezone(timedelta(hours=8))),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
    ],
)
def test_row_to_event_matches_protobuf_helpers(occurred_at: datetime) -> None:
    row = SimpleNamespace(
        event_id="e-1",
        event_type="payments.payment.captured.v1",
        aggregate_id="acc-1",
        sequence=7,
        user_id="u-1",
        payload=PAYLOAD,
        traceparent=TRACEPARENT,
        tracestate="k=v",
        occurred_at=occurred_at,
    )
    built, expected = row_to_event(row, "payments"), _reference(row)
    assert built == expected
    assert built.payload.fields["amount_minor_units"].string_value == "1000000000000000001"  # exact money


def test_span_context_reads_a_traceparent_as_the_propagator_does() -> None:
    mine = _span_context(TRACEPARENT)
    theirs = trace.get_current_span(extract_context({"traceparent": TRACEPARENT})).get_span_context()
    assert mine is not None
    assert (mine.trace_id, mine.span_id, mine.trace_flags, mine.is_remote) == (
        theirs.trace_id,
        theirs.span_id,
        theirs.trace_flags,
        theirs.is_remote,
    )


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c8031_c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
    ],
)
def test_span_context_refuses_what_is_not_a_valid_traceparent(traceparent: str) -> None:
    assert _span_context(traceparent) is None
