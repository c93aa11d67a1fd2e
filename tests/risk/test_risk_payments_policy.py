"""Payments' explicit policy when risk is slow or down (FINMESH_RISK_UNAVAILABLE_POLICY).

"review" holds the payer's funds for a risk officer; "decline" refuses with
UNAVAILABLE / RISK_UNAVAILABLE and moves nothing (payments does not record the
refusal, so the caller may retry with the same key).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.platform.rpc.guard import reason_of
from tests.risk.harness import cny, key
from tests.risk.mesh import open_wallet, owner, risk_mesh


class SlowRisk(grpc.aio.ServerInterceptor):
    """Delays AssessPayment on the risk server itself: risk is up, merely slower than payments will wait."""

    def __init__(self) -> None:
        self.delay = 0.0

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if self.delay and details.method.endswith("/AssessPayment"):
            await asyncio.sleep(self.delay)
        return await continuation(details)


async def _pay(stub, payer: str, payee: str, idem: str = "") -> pay_pb.Payment:
    return (
        await stub.CreatePayment(
            pay_pb.CreatePaymentRequest(
                idempotency_key=idem or key(), payer_account_id=payer, payee_account_id=payee, amount=cny(2_000)
            ),
            timeout=10,
        )
    ).payment


async def _balance(stub, account: str) -> tuple[int, int]:
    b = (await stub.GetAccount(pay_pb.GetAccountRequest(account_id=account))).account.balance
    return b.available_minor_units, b.held_minor_units


@pytest.mark.parametrize("policy", ["review", "decline"])
async def test_policy_when_risk_is_slow_then_stopped(databases, tmp_path: Path, policy: str) -> None:
    """Past the deadline and with risk stopped, the configured policy decides; with risk healthy it approves."""
    slow = SlowRisk()
    async with risk_mesh(
        databases, tmp_path, risk_unavailable_policy=policy, call_timeout_seconds=0.5, risk_interceptors=[slow]
    ) as mesh:
        stub = mesh.pay_stub()
        payer = await open_wallet(stub, owner(), top_up=10_000)
        payee = await open_wallet(stub, owner())
        assert (await _pay(stub, payer, payee)).status == pay_pb.PAYMENT_STATUS_CAPTURED

        slow.delay = 1.5  # well past payments' 0.5 s deadline
        await _expect_policy(stub, policy, payer, payee, expected_balance=(8_000 - 2_000, 2_000))
        slow.delay = 0.0

        idem = key()
        await mesh.risk.server.server.stop(0)  # risk is gone: connection refused
        held_before = (await _balance(stub, payer))[1]
        await _expect_policy(
            stub,
            policy,
            payer,
            payee,
            idem=idem,
            expected_balance=(6_000 - 2_000, held_before + 2_000) if policy == "review" else (8_000, 0),
        )


async def _expect_policy(
    stub, policy: str, payer: str, payee: str, expected_balance: tuple[int, int], idem: str = ""
) -> None:
    if policy == "review":
        held = await _pay(stub, payer, payee, idem)
        assert held.status == pay_pb.PAYMENT_STATUS_IN_REVIEW
        assert list(held.risk.reasons) == ["RISK_UNAVAILABLE"]
        assert await _balance(stub, payer) == expected_balance
        return
    before = await _balance(stub, payer)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _pay(stub, payer, payee, idem)
    assert (refused.value.code(), reason_of(refused.value)) == (grpc.StatusCode.UNAVAILABLE, "RISK_UNAVAILABLE")
    assert await _balance(stub, payer) == before  # nothing moved, nothing held
