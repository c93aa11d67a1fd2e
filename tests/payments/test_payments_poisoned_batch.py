"""The ledger writer's group commit: one payment the database refuses fails alone, never its batch.

The poison goes to the writer directly (CreatePayment's own use case, below the servicer's input checks,
which refuse such strings at the edge), so the test still holds if an edge check misses a field.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

import grpc
import pytest

from finmesh.payments.api import convert
from finmesh.payments.clients.risk import RiskVerdict
from finmesh.payments.domain.limits import LimitPolicy
from finmesh.payments.domain.payments import CaptureMode, PaymentRequest, RiskDecision
from finmesh.payments.store.tiers import TierSource
from finmesh.payments.store.uow import UnitOfWork
from finmesh.payments.usecases import payments as usecase
from finmesh.payments.usecases.ledger_writer import Command
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.money import Money
from finmesh.platform.storage.idempotency import ANONYMOUS
from tests.payments.harness import payments_mesh, refusal
from tests.poisoned_rows import POISONS, assert_refused_as_expected, poisoned_text, refuse_rows, skip_where_harmless

GOOD, FUNDS, AMOUNT, POISONED = 20, 10_000, 700, 7  # the poisoned payment sits in the middle of the batch


class TiersAsked:
    """The writer's tier source, noting which payers each transaction asked about: a transaction reads the
    tiers of all its payers at once, so the owners asked together are the payers of one batch."""

    def __init__(self, source: TierSource) -> None:
        self._source = source
        self.asked: list[set[str]] = []

    async def tiers(self, conn: Any, owner_ids: Collection[str]) -> dict[str, str]:
        self.asked.append(set(owner_ids))
        return await self._source.tiers(conn, owner_ids)


def command(payer: str, payee: str, key: str, description: str, limits: usecase.LimitRules) -> Command:
    """CreatePayment's command for the ledger writer, as the servicer builds it after its checks."""
    payment_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
    request = PaymentRequest(payer, payee, Money("CNY", AMOUNT), CaptureMode.AUTOMATIC, description)
    verdict = RiskVerdict("assessment-" + key, 0, RiskDecision.APPROVE, ())

    async def action(uow: UnitOfWork) -> Any:
        return await usecase.create_payment(uow, payment_id, request, verdict, limits)

    return Command(
        method="CreatePayment",
        scope=ANONYMOUS,
        key=key,
        fingerprint=f"{key}/{description}".encode("utf-8", "surrogatepass"),
        response_type=pb.CreatePaymentResponse,
        action=action,
        render=lambda state: pb.CreatePaymentResponse(payment=convert.payment(state)),
        accounts=(payer, payee),
    )


@pytest.mark.parametrize("poison", POISONS)
async def test_one_refused_payment_among_twenty_fails_alone(databases, tmp_path: Path, poison: str) -> None:
    skip_where_harmless(poison, databases.kind)
    async with payments_mesh(databases, tmp_path) as pay:
        c, writer = pay.client, pay.app.writer
        owners = [uuid.uuid4().hex for _ in range(GOOD + 1)]
        payers = [await c.wallet(owner) for owner in owners]
        payee = await c.merchant()
        for payer in payers:
            await c.top_up(payer, FUNDS)
        if poison == "trigger":
            await refuse_rows(pay.db.engine, "payments", "description")
        settings = pay.app.settings
        limits = usecase.LimitRules(LimitPolicy(settings.limit_table()), settings.limits_utc_offset_minutes)
        keys = [uuid.uuid4().hex for _ in payers]
        descriptions = [poisoned_text(poison) if i == POISONED else f"good {i}" for i in range(GOOD + 1)]

        def batch() -> list[Command]:
            return [command(p, payee, k, d, limits) for p, k, d in zip(payers, keys, descriptions, strict=True)]

        async def submit_together(commands: list[Command]) -> list[Any]:
            # Queued in one step of the event loop, before the writer's task wakes: one batch takes them all.
            return await asyncio.gather(*(writer.submit(command) for command in commands), return_exceptions=True)

        writer.tier_source = tiers = TiersAsked(writer.tier_source)
        results = await submit_together(batch())

        assert tiers.asked[0] == set(owners), "the 21 payments did not share a transaction"
        assert_refused_as_expected(results.pop(POISONED), poison)
        assert all(isinstance(r, pb.CreatePaymentResponse) for r in results), results
        assert [r.payment.status for r in results] == [pb.PAYMENT_STATUS_CAPTURED] * GOOD
        balances = [(await c.balance(p)).total_minor_units for p in payers]
        assert balances == [FUNDS if i == POISONED else FUNDS - AMOUNT for i in range(GOOD + 1)]
        assert (await c.balance(payee)).total_minor_units == GOOD * AMOUNT
        poisoned_id = str(uuid.uuid5(uuid.NAMESPACE_URL, keys[POISONED]))
        missing = await refusal(c.stub.GetPayment(pb.GetPaymentRequest(payment_id=poisoned_id)))
        assert missing.code == grpc.StatusCode.NOT_FOUND
        await pay.check_books()

        # Nothing doubled: the 20 answer from their stored replies, byte for byte, and move no money again.
        again = await submit_together(batch())
        assert_refused_as_expected(again.pop(POISONED), poison)
        assert [r.SerializeToString() for r in again] == [r.SerializeToString() for r in results]
        assert (await c.balance(payee)).total_minor_units == GOOD * AMOUNT

        # The refused payment left no answer under its key: corrected, the same key goes through, once.
        corrected = await writer.submit(command(payers[POISONED], payee, keys[POISONED], "corrected", limits))
        assert corrected.payment.payment_id == poisoned_id
        assert (await c.balance(payers[POISONED])).total_minor_units == FUNDS - AMOUNT
        assert (await c.balance(payee)).total_minor_units == (GOOD + 1) * AMOUNT
        await pay.check_books()
