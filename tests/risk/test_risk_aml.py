"""AML: large-value and structuring scenarios file reports that ListAmlReports returns."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from finmesh.platform.rpc.guard import field_violations_of
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import payment, risk_node

JUST_UNDER = 4_900_000  # 49,000.00 CNY: under the default 50,000.00 threshold, inside its 10% margin


async def test_large_value_payment_files_a_report(databases, tmp_path: Path) -> None:
    """A payment at the threshold files one LARGE_VALUE report; a declined one files none."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        big = payment("whale", 5_000_000)
        assert "AML_LARGE_VALUE" in {r.code for r in (await risk.assess(big)).reasons}
        await risk.assess(big)  # a retry files nothing new
        declined = payment("whale", 6_000_000, payer_tier=pb.RISK_TIER_HIGH, ip_country="KP", home_country="CN")
        assert (await risk.assess(declined)).decision == pb.DECISION_DECLINE
        reports = (await risk.stub.ListAmlReports(pb.ListAmlReportsRequest())).reports
        assert [(r.kind, list(r.payment_ids), r.total.minor_units, r.user_id) for r in reports] == [
            (pb.AML_REPORT_KIND_LARGE_VALUE, [big.payment_id], 5_000_000, "whale")
        ]


async def test_structuring_files_one_report_per_window(databases, tmp_path: Path) -> None:
    """Three payments just under the threshold file one STRUCTURING report listing all three; the fourth is covered."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        split = [payment("smurf", JUST_UNDER - i) for i in range(4)]
        first, second, third, fourth = [await risk.assess(p) for p in split]
        assert "AML_STRUCTURING" not in {r.code for r in first.reasons} | {r.code for r in second.reasons}
        assert {r.code for r in third.reasons} == {"AML_STRUCTURING"} and third.decision == pb.DECISION_REVIEW
        assert "AML_STRUCTURING" in {r.code for r in fourth.reasons}
        await risk.assess(payment("smurf", 1_000_000))  # well under the margin: not part of the pattern
        await risk.assess(payment("other", JUST_UNDER))  # someone else's payment is not counted
        reply = await risk.stub.ListAmlReports(pb.ListAmlReportsRequest(kind=pb.AML_REPORT_KIND_STRUCTURING))
        assert len(reply.reports) == 1
        report = reply.reports[0]
        assert list(report.payment_ids) == [p.payment_id for p in split[:3]]
        assert (report.user_id, report.total.currency_code, report.total.minor_units) == (
            "smurf",
            "CNY",
            3 * JUST_UNDER - 3,
        )
        none = await risk.stub.ListAmlReports(pb.ListAmlReportsRequest(kind=pb.AML_REPORT_KIND_LARGE_VALUE))
        assert list(none.reports) == []


async def test_reports_page_newest_first(databases, tmp_path: Path) -> None:
    """Pages of two walk every report once, newest first; a forged token is INVALID_ARGUMENT."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        ids = [(await risk.assess(p)).payment_id for p in (payment(minor=5_000_000 + i) for i in range(5))]
        seen, token = [], ""
        while True:
            reply = await risk.stub.ListAmlReports(pb.ListAmlReportsRequest(page_size=2, page_token=token))
            seen.extend(r.payment_ids[0] for r in reply.reports)
            token = reply.next_page_token
            if not token:
                break
        assert seen == ids[::-1]
        with pytest.raises(grpc.aio.AioRpcError) as forged:
            await risk.stub.ListAmlReports(pb.ListAmlReportsRequest(page_token="'; drop table"))
        assert field_violations_of(forged.value) == ["page_token"]
