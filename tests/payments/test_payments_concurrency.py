"""Concurrency: mixed operations racing on one wallet, and two replicas writing one database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc

from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.domain.limits import limit_day
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.platform.runner import start_app
from tests.auth import channel as acting_channel
from tests.payments.harness import GENEROUS_LIMITS, Client, key, money, payments_mesh, refusal


async def _outcome(call) -> tuple[int, int]:
    """(minor units the call took from available, of which still held); (0, 0) if refused."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error  # a specific refusal, never INTERNAL
        return 0, 0
    if isinstance(reply, pb.Payment):
        held = reply.amount.minor_units if reply.status == pb.PAYMENT_STATUS_AUTHORIZED else 0
        return reply.amount.minor_units, held
    if isinstance(reply, pb.PayoutResponse):
        return reply.operation.amount.minor_units, 0
    return sum(400 for r in reply.results if r.status_code == "OK"), 0


async def test_mixed_operations_racing_on_one_wallet_never_overdraw(databases, tmp_path: Path) -> None:
    """Payments, manual holds, payouts and batch transfers at once: the wallet ends exactly where the successes say."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        alice, bob, shop = await c.wallet(), await c.wallet(), await c.merchant()
        await c.top_up(alice, 10_000)
        calls = [c.pay(alice, shop, 700) for _ in range(12)]
        calls += [c.pay(alice, bob, 500, mode=pb.CAPTURE_MODE_MANUAL) for _ in range(6)]
        calls += [c.payout(alice, 900) for _ in range(5)]
        calls += [
            c.stub.BatchCreateTransfers(
                pb.BatchCreateTransfersRequest(
                    idempotency_key=key(),
                    transfers=[
                        pb.TransferSpec(reference=f"x{i}", from_account_id=alice, to_account_id=bob, amount=money(400))
                        for i in range(2)
                    ],
                )
            )
            for _ in range(4)
        ]
        outcomes = await asyncio.gather(*(_outcome(call) for call in calls))
        taken, held = sum(o[0] for o in outcomes), sum(o[1] for o in outcomes)
        assert 0 < taken <= 10_000
        # Exact: what left available is what the successes say; holds are still the wallet's money.
        assert await c.triple(alice) == (10_000 - taken, held, 10_000 - taken + held)
        await pay.check_books()


async def test_two_replicas_on_one_database_share_the_ledger(databases, tmp_path: Path) -> None:
    """Blue and green write the same database at once: no overdraft, one unbroken audit chain."""
    async with payments_mesh(databases, tmp_path) as pay:
        async with second_replica(pay, tmp_path) as green:
            blue = pay.client
            alice, bob = await blue.wallet(), await green.wallet()
            await green.top_up(alice, 8_000)
            calls = [(blue if i % 2 else green).pay(alice, bob, 1_000) for i in range(16)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            paid = [r for r in results if isinstance(r, pb.Payment)]
            refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(paid) == 8 and len(refused) == 8
            assert await green.triple(alice) == (0, 0, 0)
            assert await blue.triple(bob) == (8_000, 0, 8_000)
            assert (await green.verify_audit()).intact
        await pay.check_books()


async def test_a_replica_precheck_on_stale_states_never_refuses_or_overdraws(databases, tmp_path: Path) -> None:
    """Each payments process pre-checks on the states its own writer last committed (store.recent). Another
    replica's top-up makes them stale: the payment must still go through (a refusal on a cached state is
    re-checked against the database). Another replica's spending makes them stale the other way: the writer
    refuses in its transaction, and nothing is overdrawn."""
    async with payments_mesh(databases, tmp_path) as pay:
        first = pay.mesh.services["payments"]
        async with second_replica(pay, tmp_path) as green:
            blue = pay.client
            alice, bob = await blue.wallet(), await blue.wallet()
            await blue.top_up(alice, 1_000)
            await blue.pay(alice, bob, 600)  # blue's writer now holds alice at 400
            assert first.app.writer.recent.payment_states((alice, bob), _today(first)) is not None
            await green.top_up(alice, 1_000)  # blue does not know: 1,400 in the database
            paid = await blue.pay(alice, bob, 1_000)
            assert paid.status == pb.PAYMENT_STATUS_CAPTURED
            assert await green.triple(alice) == (400, 0, 400)
            await green.pay(alice, bob, 400)  # alice is empty; blue's states say 400
            refused = await refusal(blue.pay(alice, bob, 300))
            assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
            assert await blue.triple(alice) == (0, 0, 0)
            assert await blue.triple(bob) == (2_000, 0, 2_000)
        await pay.check_books()


@asynccontextmanager
async def second_replica(pay, tmp_path: Path) -> AsyncIterator[Client]:
    """A second payments process on the first one's database (blue-green's other color), and a client to it."""
    settings = PaymentsSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        database_url=pay.mesh.services["payments"].database_url,
        risk_target=pay.mesh.services["risk"].target,
        notify_target="127.0.0.1:1",
        tier_limits=GENEROUS_LIMITS,
        service_name="payments",
        **pay.mesh.issuer.settings(),
    )
    app = await payments_app.build(settings)
    running = await start_app(app, settings)
    try:
        async with acting_channel(f"127.0.0.1:{running.port}", pay.mesh.issuer, pay.mesh.book) as channel:
            yield Client(channel)
    finally:
        await running.server.stop(0)
        await app.close()
        for authorizer in running.authorizers:
            await authorizer.close()


def _today(service) -> str:
    return limit_day(datetime.now(UTC), service.app.registrations[0].servicer.deps.limits.utc_offset_minutes)
