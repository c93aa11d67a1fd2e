"""BatchCreateTransfers: many transfers in one call, in order, each with its own result, one stored answer."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc

from finmesh.payments.v1 import payments_service_pb2 as pb
from tests.payments.harness import key, money, payments_mesh, refusal


def spec(reference: str, source: str, destination: str, minor: int, currency: str = "CNY") -> pb.TransferSpec:
    return pb.TransferSpec(
        reference=reference, from_account_id=source, to_account_id=destination, amount=money(minor, currency)
    )


async def test_batch_reports_each_item_and_changes_nothing_for_refused_ones(databases, tmp_path: Path) -> None:
    """Posted items move money in order; refused and invalid items carry their own code and reason."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        # An institution's own accounts (a batch moves money out of its caller's accounts only, see authz).
        owner = uuid.uuid4().hex
        a, b, frozen = await c.wallet(owner), await c.wallet(owner), await c.wallet(owner)
        dollars = await c.wallet(currency="USD")
        await c.top_up(a, 1_000)
        await c.top_up(frozen, 1_000)
        await c.freeze(frozen)
        request = pb.BatchCreateTransfersRequest(
            idempotency_key=key(),
            transfers=[
                spec("t1", a, b, 600),
                spec("t2", a, b, 600),  # only 400 left
                spec("t3", b, a, 500),  # b received 600 in t1
                spec("t4", frozen, a, 10),
                spec("t5", a, dollars, 10),
                spec("t6", a, "missing", 10),
                spec("t7", a, a, 10),  # invalid: same account
                spec("t8", a, b, 0),  # invalid: zero
            ],
        )
        reply = await c.stub.BatchCreateTransfers(request)
        outcome = {r.reference: (r.status_code, r.reason) for r in reply.results}
        assert outcome == {
            "t1": ("OK", ""),
            "t2": ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"),
            "t3": ("OK", ""),
            "t4": ("FAILED_PRECONDITION", "ACCOUNT_FROZEN"),
            "t5": ("FAILED_PRECONDITION", "CURRENCY_MISMATCH"),
            "t6": ("FAILED_PRECONDITION", "ACCOUNT_NOT_FOUND"),
            "t7": ("INVALID_ARGUMENT", "VALIDATION_FAILED"),
            "t8": ("INVALID_ARGUMENT", "VALIDATION_FAILED"),
        }
        assert [r.reference for r in reply.results] == [f"t{i}" for i in range(1, 9)]
        assert all(r.transfer_id for r in reply.results if r.status_code == "OK")
        assert (reply.posted_count, reply.refused_count) == (2, 6)
        assert await c.triple(a) == (900, 0, 900)
        assert await c.triple(b) == (100, 0, 100)
        again = await c.stub.BatchCreateTransfers(request)
        assert again.SerializeToString() == reply.SerializeToString()
        assert await c.triple(a) == (900, 0, 900)
        await pay.check_books()


async def test_batch_level_problems_refuse_the_whole_call(databases, tmp_path: Path) -> None:
    """An empty batch, too many items or duplicate references are INVALID_ARGUMENT for the call."""
    async with payments_mesh(databases, tmp_path) as pay:
        c = pay.client
        empty = await refusal(c.stub.BatchCreateTransfers(pb.BatchCreateTransfersRequest(idempotency_key=key())))
        assert (empty.code, empty.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["transfers"])
        dup = await refusal(
            c.stub.BatchCreateTransfers(
                pb.BatchCreateTransfersRequest(
                    idempotency_key=key(), transfers=[spec("x", "a", "b", 1), spec("x", "a", "b", 1)]
                )
            )
        )
        assert dup.fields == ["transfers[1].reference"]
        big = await refusal(
            c.stub.BatchCreateTransfers(
                pb.BatchCreateTransfersRequest(
                    idempotency_key=key(), transfers=[spec(f"r{i}", "a", "b", 1) for i in range(1_001)]
                )
            )
        )
        assert big.fields == ["transfers"]
