"""Group commit of assessments: concurrent payments assessed in one batch decide exactly as if one after another."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from finmesh.platform.money import Money
from finmesh.risk.store.schema import assessments
from finmesh.risk.usecases.assessing import Outcome, PaymentFacts
from finmesh.risk.usecases.assessment_writer import AssessmentWriter
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.risk.harness import payment, risk_node, rules_yaml, write_atomically

THREE_PER_MINUTE = [
    {"code": "VELOCITY_USER_COUNT", "subject": "user", "window_seconds": 60, "max_count": 3, "score": 50},
    {
        "code": "VELOCITY_DEVICE_AMOUNT",
        "subject": "device",
        "window_seconds": 60,
        "max_amount": {"CNY": 250_000},
        "score": 50,
    },
]
JUST_UNDER = 4_900_000  # inside the default structuring margin below 50,000.00 CNY


def codes(assessment: pb.Assessment) -> set[str]:
    return {r.code for r in assessment.reasons}


async def _stored(risk: Any, payment_id: str) -> int:
    async with risk.app.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).where(assessments.c.payment_id == payment_id)))


async def test_concurrent_payments_of_one_payer_see_each_other(databases, tmp_path: Path) -> None:
    """Twelve simultaneous payments by one user: exactly three approved, in fewer transactions than payments.

    The same burst also checks the device amount window, the new-device
    rule and a payment id sent three times at once, all inside batches.
    With one writer lane (the default) a replica decides strictly in turn,
    so even different payers on one device count each other.
    """
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("batch-1", velocity=THREE_PER_MINUTE))
    async with risk_node(
        await databases.new("risk"), tmp_path, risk_rules_file=str(rules_file), risk_writer_lanes=1
    ) as risk:
        before = risk.app.writer.batches
        burst = await asyncio.gather(*(risk.assess(payment("burst-user", 1_000)) for _ in range(12)))
        assert sorted(a.decision for a in burst) == [pb.DECISION_APPROVE] * 3 + [pb.DECISION_REVIEW] * 9
        print(f"12 concurrent assessments in {risk.app.writer.batches - before} transactions")
        assert risk.app.writer.batches - before < 12

        # 1000 + 1000 CNY fit the device's 2500 CNY a minute; the third 1000 does not, in whatever order.
        kiosk = await asyncio.gather(*(risk.assess(payment(minor=100_000, device_id="kiosk-1")) for _ in range(3)))
        assert sorted(len(codes(a)) for a in kiosk) == [0, 0, 1]

        # A user seen on phone-1 pays twice at once from laptop-2: only the first is a new device.
        await risk.assess(payment("mover", device_id="phone-1"))
        moved = await asyncio.gather(*(risk.assess(payment("mover", device_id="laptop-2")) for _ in range(2)))
        assert sorted(codes(a) == {"NEW_DEVICE"} for a in moved) == [False, True]

        same = payment(minor=2_000)
        replies = await asyncio.gather(*(risk.assess(same) for _ in range(3)))
        assert len({r.SerializeToString() for r in replies}) == 1
        assert await _stored(risk, same.payment_id) == 1


async def test_lanes_keep_one_payers_payments_in_turn(databases, tmp_path: Path) -> None:
    """Several batches in flight (PostgreSQL): a payer's simultaneous payments still count each other."""
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("batch-2", velocity=THREE_PER_MINUTE))
    async with risk_node(
        await databases.new("risk"), tmp_path, risk_rules_file=str(rules_file), risk_writer_lanes=3
    ) as risk:
        burst = await asyncio.gather(*(risk.assess(payment(f"lanes-user-{i % 4}", 1_000)) for i in range(48)))
        assert sorted(a.decision for a in burst) == [pb.DECISION_APPROVE] * 12 + [pb.DECISION_REVIEW] * 36


async def test_concurrent_structuring_files_one_report(databases, tmp_path: Path) -> None:
    """Four simultaneous payments just under the threshold: the 3rd and 4th complete the pattern, one report."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        split = [payment("smurf", JUST_UNDER - i) for i in range(4)]
        results = await asyncio.gather(*(risk.assess(p) for p in split))
        assert sorted("AML_STRUCTURING" in codes(a) for a in results) == [False, False, True, True]
        reports = (
            await risk.stub.ListAmlReports(pb.ListAmlReportsRequest(kind=pb.AML_REPORT_KIND_STRUCTURING))
        ).reports
        assert len(reports) == 1 and len(reports[0].payment_ids) == 3
        assert set(reports[0].payment_ids) < {p.payment_id for p in split}


def _facts(payment_id: str) -> PaymentFacts:
    return PaymentFacts(
        payment_id=payment_id, payer_user_id="u", payer_account_id="a", payee_account_id="b", amount=Money("CNY", 100)
    )


async def test_a_failing_batch_is_committed_again_without_the_payment_that_fails_it() -> None:
    """One payment that fails its batch fails alone: the batch is split in halves until it stands alone, its
    neighbours get their outcomes, and the writer goes on."""
    batches: list[list[str]] = []

    async def assess(engine: Any, rules: Any, batch: list[PaymentFacts], now: Any, traces: Any) -> list[Outcome]:
        batches.append([f.payment_id for f in batch])
        await asyncio.sleep(0.01)
        if any(f.payment_id == "bad" for f in batch):
            raise RuntimeError("this payment breaks its batch")
        return [Outcome(f.payment_id) for f in batch]

    writer = AssessmentWriter(None, lambda: None, assess=assess)  # type: ignore[arg-type]
    try:
        results = await asyncio.gather(
            *(writer.submit(_facts(p)) for p in ["a", "b", "bad", "c", "d"]), return_exceptions=True
        )
        assert [r.row if isinstance(r, Outcome) else str(r) for r in results] == [
            "a",
            "b",
            "this payment breaks its batch",
            "c",
            "d",
        ]
        # Submitted together, the five shared a transaction; then halves, in order, until "bad" stood alone.
        assert batches == [["a", "b", "bad", "c", "d"], ["a", "b"], ["bad", "c", "d"], ["bad"], ["c", "d"]]
        assert (await writer.submit(_facts("e"))).row == "e"
    finally:
        await writer.stop()


@pytest.mark.parametrize("size", [1, 5])
async def test_stop_drains_what_is_queued(size: int) -> None:
    """Stopping the writer finishes queued assessments instead of dropping their callers."""

    async def assess(engine: Any, rules: Any, batch: list[PaymentFacts], now: Any, traces: Any) -> list[Outcome]:
        await asyncio.sleep(0.01)
        return [Outcome(f.payment_id) for f in batch]

    writer = AssessmentWriter(None, lambda: None, assess=assess)  # type: ignore[arg-type]
    pending = [asyncio.create_task(writer.submit(_facts(str(i)))) for i in range(size)]
    await asyncio.sleep(0)
    await writer.stop()
    assert [(await p).row for p in pending] == [str(i) for i in range(size)]


@pytest.mark.parametrize("linger", [0.0, 0.3])
async def test_under_load_a_batch_lingers_for_more_and_light_traffic_never_waits(linger: float) -> None:
    """Submissions 20 ms apart share a transaction when the writer lingers (up to 0.3 s here), and go one by
    one when it does not; the first submission after a quiet spell is assessed at once either way."""
    sizes: list[int] = []

    async def assess(engine: Any, rules: Any, batch: list[PaymentFacts], now: Any, traces: Any) -> list[Outcome]:
        sizes.append(len(batch))
        return [Outcome(f.payment_id) for f in batch]

    writer = AssessmentWriter(None, lambda: None, linger_seconds=linger, assess=assess)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        assert (await writer.submit(_facts("quiet"))).row == "quiet"
        assert loop.time() - started < 0.2  # nothing suggested more were coming: no wait

        async def later(i: int) -> Outcome:
            await asyncio.sleep(0.02 * i)
            return await writer.submit(_facts(str(i)))

        busy = await asyncio.gather(*(later(i) for i in range(1, 9)))
        assert [o.row for o in busy] == [str(i) for i in range(1, 9)]
        if linger:
            assert len(sizes) < 6, sizes  # 8 payments over 160 ms, each batch waiting up to 300 ms
        else:
            assert sizes == [1] * 9
    finally:
        await writer.stop()


async def test_load_test_traffic_stays_out_of_velocity(databases, tmp_path: Path) -> None:
    """Synthetic payments are scored but counted in nobody's velocity: not a customer's on the same device,
    not their own (a harness against a live deployment must not trip itself after a few payments)."""
    rules_file = tmp_path / "rules.yaml"
    write_atomically(rules_file, rules_yaml("synthetic-1", velocity=THREE_PER_MINUTE))
    async with risk_node(await databases.new("risk"), tmp_path, risk_rules_file=str(rules_file)) as risk:
        probes = [
            await risk.assess(payment("probe-user", 1_000, device_id="shared-1", synthetic=True)) for _ in range(4)
        ]
        probes += await asyncio.gather(
            *(risk.assess(payment("probe-user", 1_000, device_id="shared-1", synthetic=True)) for _ in range(4))
        )
        assert [codes(a) for a in probes] == [set()] * 8
        # A customer on the same device starts from zero: three approvals, then the user's own count trips.
        real = [await risk.assess(payment("customer", 1_000, device_id="shared-1")) for _ in range(4)]
        assert [a.decision for a in real] == [pb.DECISION_APPROVE] * 3 + [pb.DECISION_REVIEW]
        assert codes(real[-1]) == {"VELOCITY_USER_COUNT"}
