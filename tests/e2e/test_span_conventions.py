"""Spans as an OTLP receiver sees them: RPC semantic conventions in each OTEL_SEMCONV_STABILITY_OPT_IN mode, the
resource as OTEL_RESOURCE_ATTRIBUTES sets it, and the JSONL span file still written while OTLP is on.

The no-op mesh's stand-ins run as the services run (finmesh.platform.runner: setup_tracing, create_server, the
guard's server spans, open_channel's client spans); their exporters point at a real OTLP/gRPC trace receiver
(finmesh.drill.collector) in this process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from finmesh.common.v1 import money_pb2
from finmesh.drill.collector import CollectedSpan, SpanCollector
from finmesh.load.noop import NoopMesh
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

PAY = "finmesh.payments.v1.PaymentsService"
ASSESS = "finmesh.risk.v1.RiskService"
REQUEST = pb.CreatePaymentRequest(
    idempotency_key="conventions-1",
    payer_account_id="acc-a",
    payee_account_id="acc-b",
    amount=money_pb2.Money(currency_code="CNY", minor_units=100),
    capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
)
OLD = {"rpc.system", "rpc.service", "rpc.grpc.status_code"}
STABLE = {"rpc.system.name", "rpc.response.status_code"}


@pytest.fixture
def collector() -> Iterator[SpanCollector]:
    collector = SpanCollector().start()
    yield collector
    collector.stop()


def _wait_for(collector: SpanCollector, count: int, timeout: float = 10.0) -> list[CollectedSpan]:
    deadline = time.monotonic() + timeout
    while len(collector.spans) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return collector.spans


def _code(span: CollectedSpan) -> str:
    """The call's status code name, from whichever convention the span carries."""
    if "rpc.response.status_code" in span.attributes:
        return str(span.attributes["rpc.response.status_code"])
    return next(c.name for c in grpc.StatusCode if c.value[0] == span.attributes["rpc.grpc.status_code"])


def _one(spans: list[CollectedSpan], service: str, kind: str, name: str, code: str = "OK") -> CollectedSpan:
    found = [s for s in spans if s.service == service and s.kind == f"SPAN_KIND_{kind}" and s.name == name]
    found = [s for s in found if _code(s) == code]
    assert len(found) == 1, f"{service} {kind} {name} {code}: {len(found)} spans of {len(spans)}"
    return found[0]


@pytest.mark.parametrize("opt_in", ["", "rpc", "http,rpc/dup,rpc"])
async def test_spans_follow_the_rpc_conventions_of_the_opt_in(
    opt_in: str, collector: SpanCollector, tmp_path: Path
) -> None:
    old, stable = opt_in != "rpc", "rpc" in opt_in
    env = {
        # The traces variable alone: it turns on span export only (the receiver serves no metrics).
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        "OTEL_SEMCONV_STABILITY_OPT_IN": opt_in,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=conventions,service.version=from-env",
    }
    async with NoopMesh(tracing=True, data_dir=tmp_path, extra_env=env) as mesh:
        risk_port = next(p.port for p in mesh.processes if p.role == "risk")
        pay_port = next(p.port for p in mesh.processes if p.role == "payments")
        async with grpc.aio.insecure_channel(mesh.target) as channel:
            stub = pb_grpc.PaymentsServiceStub(channel)
            await stub.CreatePayment(REQUEST, metadata=mesh.metadata(), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CreatePayment(REQUEST, timeout=5)  # no token: UNAUTHENTICATED, not a server fault
    # The stand-ins exited (their batch processors flush on shutdown): 2 payments server spans, 1 client, 1 risk.
    spans = await asyncio.to_thread(_wait_for, collector, 4)

    pay_server = _one(spans, "noop-payments", "SERVER", f"{PAY}/CreatePayment")
    refused = _one(spans, "noop-payments", "SERVER", f"{PAY}/CreatePayment", code="UNAUTHENTICATED")
    client = _one(spans, "noop-payments", "CLIENT", f"{ASSESS}/AssessPayment")
    risk_server = _one(spans, "noop-risk", "SERVER", f"{ASSESS}/AssessPayment")

    for span, service, method in ((pay_server, PAY, "CreatePayment"), (client, ASSESS, "AssessPayment")):
        attributes = span.attributes
        keys = attributes.keys()
        # Each convention's attributes all there, or none of them.
        assert (
            (keys >= OLD, keys >= STABLE) == (old, stable) and bool(keys & OLD) is old and bool(keys & STABLE) is stable
        )
        # rpc/dup: one key cannot hold both values; rpc.method takes the stable, fully-qualified one.
        assert attributes["rpc.method"] == (f"{service}/{method}" if stable else method)
        if old:
            assert attributes["rpc.system"] == "grpc" and attributes["rpc.service"] == service
            assert attributes["rpc.grpc.status_code"] == 0
        if stable:
            assert attributes["rpc.system.name"] == "grpc" and attributes["rpc.response.status_code"] == "OK"
        assert "error.type" not in attributes

    # A client span names the server as its channel's target does.
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == risk_port
    # A server span names itself by its bound address, and the caller by its connection.
    assert (risk_server.attributes["server.address"], risk_server.attributes["server.port"]) == ("127.0.0.1", risk_port)
    assert (pay_server.attributes["server.address"], pay_server.attributes["server.port"]) == ("127.0.0.1", pay_port)
    assert risk_server.attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(risk_server.attributes["network.peer.port"], int)
    assert risk_server.attributes["network.peer.port"] not in (0, risk_port, pay_port)

    # UNAUTHENTICATED is the caller's fault: no ERROR status on a server span, no error.type.
    assert refused.ok and "error.type" not in refused.attributes

    # The environment's resource attributes win over finmesh's own (service.version), and add to them.
    assert pay_server.resource["deployment.environment.name"] == "conventions"
    assert pay_server.version == "from-env"
    assert pay_server.resource["service.namespace"] == "finmesh"

    # OTLP did not replace the span file: every span the receiver got is in the files too.
    lines = [
        json.loads(line) for path in (tmp_path / "spans").glob("*.jsonl") for line in path.read_text().splitlines()
    ]
    in_files: dict[str, Any] = {(s["service"], s["kind"], s["name"]) for s in lines}
    assert {(s.service, s.kind.removeprefix("SPAN_KIND_"), s.name) for s in spans} <= in_files
    assert len(lines) == len(spans)
