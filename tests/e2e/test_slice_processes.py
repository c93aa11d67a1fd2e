"""The thin slice across four separate service processes: money, one trace, masked logs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from finmesh.cli.mesh import Mesh
from finmesh.cli.slice import bearer, run_slice
from finmesh.cli.traces import load_spans
from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.observability.telemetry import JsonlSpanExporter
from finmesh.platform.rpc.guard import reason_of

pytestmark = pytest.mark.e2e


@pytest.fixture
async def mesh(databases, tmp_path: Path):
    """The four services as child processes, each on its own database of the parametrised kind."""
    urls = {}
    if databases.kind == "postgres":
        urls = {name: (await databases.new(name)) for name in ("identity", "payments", "risk", "notify")}
    m = Mesh(tmp_path / "mesh", database_urls=urls)
    m.start(timeout=60)
    yield m
    codes = m.stop()
    assert codes == dict.fromkeys(codes, 0), f"a service did not exit cleanly: {codes}"


async def _balances(target: str, *accounts_and_tokens: tuple[str, str]) -> list[int]:
    """Each account's available balance, read by its owner with the token the demo logged in with."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PaymentsServiceStub(channel)
        replies = [
            await stub.GetAccount(pb.GetAccountRequest(account_id=a), metadata=bearer(t))
            for a, t in accounts_and_tokens
        ]
    return [r.account.balance.available_minor_units for r in replies]


async def _refusal(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError("expected a refusal")


async def _enforcement(target: str, result) -> None:  # type: ignore[no-untyped-def]
    """Auth is on by default in the processes: no token, a forged token, another customer's account all refused."""
    payer_token = result.tokens[result.payer_user_id]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PaymentsServiceStub(channel)
        missing = await _refusal(stub.GetAccount(pb.GetAccountRequest(account_id=result.payer_account_id)))
        assert (missing.code(), reason_of(missing)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
        head, body, sig = payer_token.split(".")
        forged = f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
        tampered = await _refusal(
            stub.GetAccount(pb.GetAccountRequest(account_id=result.payer_account_id), metadata=bearer(forged))
        )
        assert (tampered.code(), reason_of(tampered)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
        other = await _refusal(
            stub.TopUp(
                pb.TopUpRequest(
                    idempotency_key="e2e-not-mine",
                    account_id=result.payee_account_id,
                    channel="test_bank",
                    amount=money_pb2.Money(currency_code="CNY", minor_units=1),
                ),
                metadata=bearer(payer_token),
            )
        )
        assert (other.code(), reason_of(other)) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")


def _client_provider(span_file: Path) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(span_file)))
    return provider


async def test_slice_across_four_processes(mesh: Mesh) -> None:
    """Onboard (three checks, codes from the fake SMS provider), log in, open, top up, pay, all with tokens:
    balances exact, calls without a valid token refused, one connected trace over all four services, clean logs."""
    provider = _client_provider(mesh.span_dir / "client.jsonl")
    result = await run_slice(mesh.targets(), mesh.fakes["sms"], top_up=100_000, pay=12_345, tracer_provider=provider)
    provider.shutdown()

    assert result.payee_receipts == 1
    assert await _balances(
        mesh.targets()["payments"],
        (result.payer_account_id, result.tokens[result.payer_user_id]),
        (result.payee_account_id, result.tokens[result.payee_user_id]),
    ) == [87_655, 12_345]
    await _enforcement(mesh.targets()["payments"], result)

    await asyncio.sleep(0.5)  # let the services' batch span processors export
    codes = mesh.stop()
    assert set(codes.values()) == {0}
    spans = [s for s in load_spans(mesh.span_dir) if s["trace_id"] == result.trace_id]
    by_id = {s["span_id"]: s for s in spans}
    services = {s["service"] for s in spans}
    assert {"identity", "payments", "risk", "notify"} <= services

    # Every span but the client's root has its parent inside the same trace.
    roots = [s for s in spans if s["parent_span_id"] is None]
    assert [r["name"] for r in roots] == ["onboard and pay"]
    assert all(s["parent_span_id"] in by_id for s in spans if s["parent_span_id"] is not None)

    def chain(span: dict) -> list[str]:
        names = []
        while span is not None:
            names.append(f"{span['service']}:{span['kind']}:{span['name']}")
            span = by_id.get(span["parent_span_id"])
        return names

    # Onboarding also reaches risk (identity -> AssessOnboarding); this chain is the payment's.
    risk_server = next(
        s
        for s in spans
        if s["service"] == "risk" and s["kind"] == "SERVER" and s["name"] == "finmesh.risk.v1.RiskService/AssessPayment"
    )
    assert chain(risk_server)[1:3] == [
        "payments:CLIENT:finmesh.risk.v1.RiskService/AssessPayment",
        "payments:SERVER:finmesh.payments.v1.PaymentsService/CreatePayment",
    ]
    # The asynchronous hop: notify's server span descends from the relay's PRODUCER span,
    # which descends from the CreatePayment server span that wrote the event.
    captured = next(s for s in spans if s["name"] == "payments.payment.captured.v1 send")
    assert captured["kind"] == "PRODUCER"
    assert by_id[captured["parent_span_id"]]["name"] == "finmesh.payments.v1.PaymentsService/CreatePayment"
    notify_hop = [
        s
        for s in spans
        if s["service"] == "notify"
        and s["kind"] == "SERVER"
        and captured["span_id"] in [p.split(":")[0] for p in _ancestors(s, by_id)]
    ]
    assert notify_hop, "notify's DeliverEvent is not a descendant of the relay span"

    # Logs: each service logged under this trace; no identity number, phone or e-mail in clear anywhere.
    lines = []
    for path in mesh.log_dir.glob("*.log"):
        lines.extend((path.stem, line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    records = [(svc, json.loads(line)) for svc, line in lines]
    traced = {svc for svc, rec in records if rec.get("trace_id") == result.trace_id}
    assert {"identity", "payments", "risk", "notify"} <= traced
    text = "\n".join(line for _, line in lines)
    assert len(result.people) == 2
    for person in result.people:
        for secret in (person.id_number, person.phone, person.phone[1:], person.email, person.legal_name):
            assert secret not in text
    span_text = "\n".join(p.read_text(encoding="utf-8") for p in mesh.span_dir.glob("*.jsonl"))
    for person in result.people:
        assert person.id_number not in span_text and person.phone not in span_text


def _ancestors(span: dict, by_id: dict) -> list[str]:
    out = []
    parent = span["parent_span_id"]
    while parent in by_id:
        out.append(parent)
        parent = by_id[parent]["parent_span_id"]
    return out
