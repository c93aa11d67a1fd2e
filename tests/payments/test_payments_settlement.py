"""Settlement: gross, fees (rate + fixed), risk reserve, net; merchants are paid out from settled funds only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.payments.harness import key, payments_mesh, refusal

FEES = {"settlement_fee_rate_bp": 60, "settlement_fee_fixed_minor_units": 10, "settlement_reserve_bp": 500}


async def test_settlement_splits_gross_and_only_settled_funds_leave(databases, tmp_path: Path) -> None:
    """Collect before pay: takings are not paid out until settled; the batch splits them exactly."""
    async with payments_mesh(databases, tmp_path, **FEES) as pay:
        c = pay.client
        alice, shop = await c.wallet(), await c.merchant()
        await c.top_up(alice, 100_000)
        first = await c.pay(alice, shop, 10_000)
        await c.pay(alice, shop, 20_000)
        await c.pay(alice, shop, 333)
        await c.refund(first.payment_id, 1_000)  # before settlement: taken back from the unsettled takings
        assert await c.triple(shop) == (0, 29_333, 29_333)
        early = await refusal(c.payout(shop, 100))
        assert (early.code, early.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "UNSETTLED_FUNDS")

        batch = await c.settle(shop)
        # fees = round_half_up(29_333 * 60 / 10_000 = 175.998) + 3 * 10 = 206
        # reserve = floor(29_333 * 500 / 10_000 = 1_466.65) = 1_466; net = 29_333 - 206 - 1_466
        assert (
            batch.gross.minor_units,
            batch.fees.minor_units,
            batch.risk_reserve.minor_units,
            batch.net.minor_units,
            batch.payment_count,
        ) == (29_333, 206, 1_466, 27_661, 3)
        assert await c.triple(shop) == (27_661, 0, 27_661)
        assert (await c.balance("platform-fee:CNY")).total_minor_units == 206
        # Opening the platform's fee account returns the one settlement credits (one per currency).
        assert await c.open(pb.ACCOUNT_KIND_PLATFORM_FEE) == "platform-fee:CNY"
        assert (await c.balance("risk-reserve:CNY")).total_minor_units == 1_466

        assert (await refusal(c.payout(shop, 27_662))).reason == "INSUFFICIENT_FUNDS"
        assert (await c.payout(shop, 27_000)).operation.status == pb.CHANNEL_OPERATION_STATUS_SUCCEEDED
        # After settlement a refund comes out of the merchant's settled balance.
        await c.refund(first.payment_id, 600)
        assert await c.triple(shop) == (61, 0, 61)
        assert (await refusal(c.refund(first.payment_id, 100))).reason == "INSUFFICIENT_FUNDS"

        empty = await c.settle(shop)
        assert (empty.gross.minor_units, empty.payment_count) == (0, 0)
        listed = await c.stub.ListSettlementBatches(pb.ListSettlementBatchesRequest(merchant_account_id=shop))
        assert {b.batch_id for b in listed.batches} == {batch.batch_id, empty.batch_id}
        await pay.check_books()


async def test_cutoff_limits_the_batch_and_bad_requests_are_refused(databases, tmp_path: Path) -> None:
    """Only payments captured up to the cut-off settle; wallets and future cut-offs are refused."""
    async with payments_mesh(databases, tmp_path, **FEES) as pay:
        c = pay.client
        alice, shop = await c.wallet(), await c.merchant()
        await c.top_up(alice, 10_000)
        await c.pay(alice, shop, 1_000)
        await asyncio.sleep(0.05)
        cutoff = timestamp_pb2.Timestamp()
        cutoff.FromDatetime(datetime.now(UTC))
        await asyncio.sleep(0.05)
        held = await c.pay(alice, shop, 2_000, mode=pb.CAPTURE_MODE_MANUAL)
        await c.capture(held.payment_id)
        batch = (
            await c.stub.RunSettlement(
                pb.RunSettlementRequest(idempotency_key=key(), merchant_account_id=shop, cutoff=cutoff)
            )
        ).batch
        assert (batch.gross.minor_units, batch.payment_count) == (1_000, 1)
        rest = await c.settle(shop)
        assert (rest.gross.minor_units, rest.payment_count) == (2_000, 1)
        assert (await refusal(c.settle(alice))).reason == "INVALID_STATE"
        future = timestamp_pb2.Timestamp(seconds=int(datetime.now(UTC).timestamp()) + 3_600)
        late = await refusal(
            c.stub.RunSettlement(
                pb.RunSettlementRequest(idempotency_key=key(), merchant_account_id=shop, cutoff=future)
            )
        )
        assert late.fields == ["cutoff"]
        await pay.check_books()
