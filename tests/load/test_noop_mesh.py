"""The no-op baseline mesh starts as processes, answers a payment through both hops, checks tokens, and spreads
payments' calls over risk replicas."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from finmesh.common.v1 import money_pb2
from finmesh.load.noop import NoopMesh
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

REQUEST = pb.CreatePaymentRequest(
    idempotency_key="noop-1",
    payer_account_id="acc-a",
    payee_account_id="acc-b",
    amount=money_pb2.Money(currency_code="CNY", minor_units=100),
    capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
)


async def _server_spans(span_dir: Path, expected: int, timeout: float = 5.0) -> dict[str, list[dict]]:
    """Server spans per span file, once `expected` files hold some (the batch processor exports within 200 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = {}
        for path in sorted(span_dir.glob("*.jsonl")):
            spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            found[path.name] = [s for s in spans if s["kind"] == "SERVER"]
        if sum(1 for spans in found.values() if spans) >= expected or loop.time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_noop_mesh_answers_through_both_hops_and_checks_tokens(tmp_path: Path) -> None:
    async with NoopMesh(tracing=True, risk=2, data_dir=tmp_path) as mesh:
        assert len(mesh.processes) == 3
        async with grpc.aio.insecure_channel(mesh.target) as channel:
            stub = pb_grpc.PaymentsServiceStub(channel)
            replies = [await stub.CreatePayment(REQUEST, metadata=mesh.metadata(), timeout=5) for _ in range(10)]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreatePayment(REQUEST, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert all(r.payment.status == pb.PAYMENT_STATUS_CAPTURED and r.payment.payment_id for r in replies)
        assert len({r.payment.payment_id for r in replies}) == 10

        spans = await _server_spans(tmp_path / "spans", expected=3)
        payments = [s for name, found in spans.items() if "payments" in name for s in found]
        risk = {name: found for name, found in spans.items() if "risk" in name}
        # Every call is a server span in payments (the refused one too); every answered one also a server span
        # in some risk replica, in the same trace.
        assert len(payments) == 11
        assert sorted(len(found) for found in risk.values()) != [0, 10], "risk calls all went to one replica"
        assert sum(len(found) for found in risk.values()) == 10
        risk_traces = {s["trace_id"] for found in risk.values() for s in found}
        assert risk_traces <= {s["trace_id"] for s in payments}
    assert mesh.processes == []
