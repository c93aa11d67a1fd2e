"""payments.api.convert.timestamp builds Timestamps directly; it must agree with protobuf's FromDatetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from finmesh.payments.api.convert import timestamp

_ZONES = st.one_of(st.none(), st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))))


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), _ZONES)
def test_timestamp_matches_from_datetime(moment: datetime, zone: timezone | None) -> None:
    if zone is not None:
        moment = moment.replace(tzinfo=zone)
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))  # naive means UTC here
    assert timestamp(moment) == expected
