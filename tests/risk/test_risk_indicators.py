"""Risk indicators per time bucket and the alert list, over gRPC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import insert, select

from finmesh.platform.rpc.guard import field_violations_of
from finmesh.risk.store.schema import assessments
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import key, payment, risk_node


def at(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


async def _raw_rows(risk) -> str:
    """Every stored assessment's time, decision and synthetic flag, for the failure message."""
    async with risk.app.engine.connect() as conn:
        rows = (
            await conn.execute(select(assessments.c.created_at, assessments.c.decision, assessments.c.synthetic))
        ).all()
        raw = (await conn.exec_driver_sql("SELECT created_at FROM assessments")).all()
    return f"rows={rows!r} raw={raw!r}"


async def _block_user(risk, user: str) -> None:
    await risk.stub.AddBlockListEntry(
        pb.AddBlockListEntryRequest(
            idempotency_key=key(), kind=pb.BLOCK_LIST_KIND_USER, value=user, reason="fraud ring"
        )
    )


async def test_indicators_count_decisions_and_alerts_per_bucket(databases, tmp_path: Path) -> None:
    """Six approvals, two reviews, one decline and one alert give exact counts and basis-point rates."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        before = datetime.now(UTC)
        for _ in range(6):
            await risk.assess(payment(minor=1_000))
        for _ in range(2):
            await risk.assess(payment(minor=6_000_000))
        await _block_user(risk, "bad-actor")
        declined = await risk.assess(payment("bad-actor"))
        assert declined.warning_level == pb.WARNING_LEVEL_CRITICAL
        await risk.assess(payment(minor=1_000, synthetic=True))  # load-test traffic stays out of the figures

        # Buckets start half an hour before the first assessment, so all of them fall in the middle one
        # however the test's seconds sit on the clock (hour-aligned buckets split a run that crossed
        # the hour: seen twice as 2 + 7 of the 9).
        start = (before - timedelta(minutes=90)).replace(microsecond=0)
        assert datetime.now(UTC) < start + timedelta(hours=2)
        reply = await risk.stub.GetRiskIndicators(
            pb.GetRiskIndicatorsRequest(start=at(start), end=at(start + timedelta(hours=3)), bucket_seconds=3600)
        )
        figures = [
            (b.assessments, b.declines, b.reviews, b.alerts, b.decline_rate_bp, b.review_rate_bp) for b in reply.buckets
        ]
        expected = [(0, 0, 0, 0, 0, 0), (9, 1, 2, 1, 1111, 2222), (0, 0, 0, 0, 0, 0)]
        assert figures == expected, await _raw_rows(risk)  # the rows themselves, should this ever differ
        assert [b.start.ToDatetime(tzinfo=UTC) for b in reply.buckets] == [
            start,
            start + timedelta(hours=1),
            start + timedelta(hours=2),
        ]


async def test_indicator_buckets_count_rows_spread_over_the_bucket(databases, tmp_path: Path) -> None:
    """Assessments minutes and seconds apart inside one bucket are all counted in it (on SQLite each second
    used to be a group of its own, and only the bucket's last second was reported)."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
        offsets = [0, 1, 59, 61, 1800, 3599, 3600, 3601]  # seconds after start: six in the first bucket, two next
        rows = [
            {
                "assessment_id": f"a-{i}",
                "payment_id": f"p-{i}",
                "user_id": "u",
                "account_id": "acct",
                "payee_account_id": "payee",
                "currency": "CNY",
                "amount": 100,
                "device_id": "",
                "ip_address": "",
                "ip_country": "",
                "home_country": "",
                "tier": "LOW",
                "score": 0,
                "decision": "DECLINE" if i == 2 else "APPROVE",
                "warning_level": "LOW",
                "reasons": [],
                "rules_version": "v",
                "synthetic": 0,
                "created_at": start + timedelta(seconds=s, microseconds=250),
            }
            for i, s in enumerate(offsets)
        ]
        async with risk.app.engine.begin() as conn:
            await conn.execute(insert(assessments), rows)
        reply = await risk.stub.GetRiskIndicators(
            pb.GetRiskIndicatorsRequest(start=at(start), end=at(start + timedelta(hours=2)), bucket_seconds=3600)
        )
        assert [(b.assessments, b.declines) for b in reply.buckets] == [(6, 1), (2, 0)]


async def test_indicator_requests_are_bounded(databases, tmp_path: Path) -> None:
    """A reversed range, no bucket size, or too many buckets is INVALID_ARGUMENT naming the field."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        now = datetime.now(UTC)
        for start, end, size, fields in [
            (now, now - timedelta(hours=1), 60, ["end"]),
            (now, now + timedelta(hours=1), 0, ["bucket_seconds"]),
            (now, now + timedelta(days=30), 60, ["bucket_seconds"]),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await risk.stub.GetRiskIndicators(
                    pb.GetRiskIndicatorsRequest(start=at(start), end=at(end), bucket_seconds=size)
                )
            assert field_violations_of(bad.value) == fields
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await risk.stub.GetRiskIndicators(pb.GetRiskIndicatorsRequest(bucket_seconds=60))
        assert field_violations_of(missing.value) == ["start", "end"]


async def test_alerts_list_by_minimum_level(databases, tmp_path: Path) -> None:
    """A critical warning raises one alert per account and incident; ListAlerts filters by minimum level."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        await _block_user(risk, "ring-leader")
        first = payment("ring-leader", payer_account_id="acct-ring")
        await risk.assess(first)
        await risk.assess(payment("ring-leader", payer_account_id="acct-ring"))  # joins the open incident
        await risk.assess(payment(minor=6_000_000))  # MEDIUM: no alert
        critical = await risk.stub.ListAlerts(pb.ListAlertsRequest(min_level=pb.WARNING_LEVEL_CRITICAL))
        assert [(a.level, a.account_id, a.payment_id, a.emergency_response_done) for a in critical.alerts] == [
            (pb.WARNING_LEVEL_CRITICAL, "acct-ring", first.payment_id, False)
        ]  # no payments target here
        assert [r.code for r in critical.alerts[0].reasons] == ["BLOCK_LISTED_USER"]
        everything = await risk.stub.ListAlerts(pb.ListAlertsRequest())
        assert len(everything.alerts) == 1
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await risk.stub.ListAlerts(pb.ListAlertsRequest(min_level=42))
        assert field_violations_of(bad.value) == ["min_level"]
