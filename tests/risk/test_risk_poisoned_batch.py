"""Risk's group commit: one assessment the database refuses fails alone, never its batch or its call.

The poison goes to the assessment writer directly (below the servicer's input checks, which refuse such
strings at the edge), or through AssessPayments as a valid value a test trigger refuses.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from finmesh.platform.money import Money
from finmesh.platform.rpc.guard import reason_of
from finmesh.risk.store.schema import assessments
from finmesh.risk.usecases.assessing import Outcome, PaymentFacts, assess_payments
from finmesh.risk.usecases.assessment_writer import AssessmentWriter
from finmesh.risk.v1 import risk_service_pb2 as pb
from tests.poisoned_rows import (
    POISONS,
    TRIGGER_VALUE,
    assert_refused_as_expected,
    poisoned_text,
    refuse_rows,
    skip_where_harmless,
)
from tests.risk.harness import payment, risk_node

GOOD, POISONED = 20, 7  # the poisoned assessment sits in the middle of the batch


async def recorded(risk: Any, payment_ids: list[str]) -> set[str]:
    async with risk.app.engine.connect() as conn:
        rows = await conn.execute(select(assessments.c.payment_id).where(assessments.c.payment_id.in_(payment_ids)))
        return {r.payment_id for r in rows}


@pytest.mark.parametrize("poison", POISONS)
async def test_one_refused_assessment_among_twenty_fails_alone(databases, tmp_path: Path, poison: str) -> None:
    skip_where_harmless(poison, databases.kind)
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        if poison == "trigger":
            await refuse_rows(risk.app.engine, "assessments", "device_id")
        batches: list[list[str]] = []  # the payment ids of each transaction the writer tried

        async def assess(database: Any, rules: Any, batch: list[PaymentFacts], now: Any, traces: Any) -> list[Outcome]:
            batches.append([f.payment_id for f in batch])
            return await assess_payments(database, rules, batch, now, traces)

        writer = AssessmentWriter(risk.app.engine, lambda: risk.app.rules.active.rules, assess=assess)
        facts = [
            PaymentFacts(
                payment_id=uuid.uuid4().hex,
                payer_user_id=f"user-{i % 4}",
                payer_account_id=f"acct-{i % 4}",
                payee_account_id="acct-payee",
                amount=Money("CNY", 1_000 + i),
                device_id=poisoned_text(poison) if i == POISONED else f"device-{i}",
            )
            for i in range(GOOD + 1)
        ]
        try:
            # Queued in one step of the event loop, before the writer's task wakes: one batch takes them all.
            results = await asyncio.gather(*(writer.submit(f) for f in facts), return_exceptions=True)
            again = await asyncio.gather(*(writer.submit(f) for f in facts), return_exceptions=True)
        finally:
            await writer.stop()

        ids = [f.payment_id for f in facts]
        assert batches[0] == ids, "the 21 assessments did not share a transaction"
        assert_refused_as_expected(results.pop(POISONED), poison)
        assert [r.row.payment_id for r in results] == ids[:POISONED] + ids[POISONED + 1 :]
        assert await recorded(risk, ids) == set(ids) - {ids[POISONED]}
        # Asked again, the 20 get their recorded assessments (nothing assessed twice); the poisoned one fails again.
        assert_refused_as_expected(again.pop(POISONED), poison)
        assert [r.row.assessment_id for r in again] == [r.row.assessment_id for r in results]


async def test_a_check_the_database_refuses_is_refused_alone_in_assess_payments(databases, tmp_path: Path) -> None:
    """AssessPayments answers each check: a check whose row fails (here a trigger refuses it, as a bug would)
    is refused INTERNAL in its own result, and the call and the other checks stand."""
    async with risk_node(await databases.new("risk"), tmp_path) as risk:
        await refuse_rows(risk.app.engine, "assessments", "device_id")
        checks = [
            payment(f"user-{i % 4}", 1_000 + i, device_id=TRIGGER_VALUE if i == POISONED else f"device-{i}")
            for i in range(GOOD + 1)
        ]
        reply = await risk.stub.AssessPayments(
            pb.AssessPaymentsRequest(checks=[pb.PaymentCheck(payment=check) for check in checks]), timeout=10
        )

        kinds = [r.WhichOneof("result") for r in reply.results]
        assert kinds == ["refusal" if i == POISONED else "assessment" for i in range(GOOD + 1)]
        refused = reply.results[POISONED].refusal
        assert (refused.code, refused.reason) == (grpc.StatusCode.INTERNAL.value[0], "")
        assert TRIGGER_VALUE not in refused.message  # no database text in the answer
        ids = [c.payment_id for c in checks]
        assert await recorded(risk, ids) == set(ids) - {ids[POISONED]}


async def test_an_outage_fails_the_whole_assess_payments_call_for_the_channel_to_retry(tmp_path: Path) -> None:
    """The database unreachable is no check's fault: AssessPayments fails UNAVAILABLE STORAGE_UNAVAILABLE as a
    whole (the caller's channel retries it; a refusal inside an OK answer it would not)."""
    calls: list[int] = []

    async def unreachable(database: Any, rules: Any, batch: list[PaymentFacts], now: Any, traces: Any) -> Any:
        calls.append(len(batch))
        raise ConnectionResetError("the database went away")

    async with risk_node(f"sqlite+aiosqlite:///{tmp_path / 'risk.db'}", tmp_path) as risk:
        servicer = risk.app.registrations[0].servicer
        servicer.writer = writer = AssessmentWriter(None, lambda: None, assess=unreachable)  # type: ignore[arg-type]
        try:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await risk.stub.AssessPayments(
                    pb.AssessPaymentsRequest(checks=[pb.PaymentCheck(payment=payment()) for _ in range(5)]), timeout=10
                )
        finally:
            await writer.stop()
        assert (raised.value.code(), reason_of(raised.value)) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        assert calls == [5]  # one transaction tried, not split: splitting cannot help against an outage
