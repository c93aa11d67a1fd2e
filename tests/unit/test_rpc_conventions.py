"""The pieces of the telemetry conventions: the opt-in switch, server and peer addresses, status attributes, the
resource's precedence and the exporters that apply (the whole path over OTLP: tests/e2e/test_span_conventions.py)."""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from finmesh.platform.observability.resource import resource_for
from finmesh.platform.observability.rpc_tracing import (
    ClientSpans,
    Conventions,
    ServerEndpoint,
    finish_server_span,
    peer_attributes,
    server_endpoint,
)
from finmesh.platform.observability.telemetry import JsonlSpanExporter, MaskingExporter, span_exporters

METHOD = "/finmesh.risk.v1.RiskService/AssessPayment"
OLD, STABLE, DUP = Conventions(old=True, stable=False), Conventions(old=False, stable=True), Conventions(True, True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", OLD),
        ("http", OLD),
        ("rpc", STABLE),
        ("http, rpc", STABLE),
        ("rpc/dup", DUP),
        ("rpc,rpc/dup", DUP),  # dup wins over rpc
        ("rpcx,database/dup", OLD),
    ],
)
def test_the_opt_in_switch(value: str, expected: Conventions) -> None:
    assert Conventions.from_env(value) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("risk:50051", ("risk", 50051)),
        ("risk", ("risk", 443)),  # gRPC's default port
        ("dns:///risk.finmesh.svc:50051", ("risk.finmesh.svc", 50051)),
        ("dns://10.0.0.10:53/risk:50051", ("risk", 50051)),  # the authority is the DNS server, not the callee
        ("dns:risk:7000", ("risk", 7000)),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50052", ("10.0.0.1", 50051)),
        ("ipv6:[::1]:50051", ("::1", 50051)),
        ("[::1]:50051", ("::1", 50051)),
        ("unix:/run/risk.sock", ("/run/risk.sock", None)),
        ("unix:///run/risk.sock", ("/run/risk.sock", None)),
    ],
)
def test_server_endpoint_of_a_target(target: str, expected: tuple[str, int | None]) -> None:
    found = server_endpoint(target)
    assert (found["server.address"], found.get("server.port")) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:10.1.2.3:51234", {"network.peer.address": "10.1.2.3", "network.peer.port": 51234}),
        ("ipv6:%5B::1%5D:51234", {"network.peer.address": "::1", "network.peer.port": 51234}),
        ("ipv6:[fe80::1]:51234", {"network.peer.address": "fe80::1", "network.peer.port": 51234}),
        ("unix:/run/x.sock", {"network.peer.address": "/run/x.sock"}),
        ("", {}),
        ("something-else", {}),
    ],
)
def test_peer_attributes(peer: str, expected: dict[str, Any]) -> None:
    assert peer_attributes(peer) == expected


def test_server_endpoint_is_filled_in_when_the_port_is_bound() -> None:
    endpoint = ServerEndpoint()
    early = endpoint.register({"rpc.method": "A"})
    endpoint.bind("0.0.0.0", 50051)  # a wildcard names no server: the host does
    late = endpoint.register({"rpc.method": "B"})
    assert early == {"rpc.method": "A", "server.address": socket.gethostname(), "server.port": 50051}
    assert late["server.address"] == socket.gethostname() and late["server.port"] == 50051
    endpoint.bind("10.0.0.7", 7)
    assert (early["server.address"], early["server.port"]) == ("10.0.0.7", 7)


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _provider() -> tuple[TracerProvider, _Keep]:
    keep = _Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))
    return provider, keep


@pytest.mark.parametrize("conventions", [OLD, STABLE, DUP])
def test_status_attributes_of_a_failed_call(conventions: Conventions) -> None:
    provider, keep = _provider()
    client = ClientSpans(provider, target="dns:///risk:50051", conventions=conventions)
    span, _ = client.start(METHOD)
    client.finish(span, grpc.StatusCode.NOT_FOUND)  # every non-OK code fails a client span
    server = provider.get_tracer("t").start_span("s")
    finish_server_span(server, grpc.StatusCode.NOT_FOUND, conventions)  # a caller's fault: not a server's
    fault = provider.get_tracer("t").start_span("f")
    finish_server_span(fault, grpc.StatusCode.UNAVAILABLE, conventions)
    server.end()
    fault.end()
    client_span, ok_server, faulted = keep.spans

    assert client_span.attributes is not None
    assert (client_span.attributes["server.address"], client_span.attributes["server.port"]) == ("risk", 50051)
    assert client_span.status.status_code is StatusCode.ERROR
    assert ok_server.status.status_code is StatusCode.UNSET and faulted.status.status_code is StatusCode.ERROR
    for span, code, failed in (
        (client_span, "NOT_FOUND", True),
        (ok_server, "NOT_FOUND", False),
        (faulted, "UNAVAILABLE", True),
    ):
        attributes = dict(span.attributes or {})
        assert ("rpc.grpc.status_code" in attributes) is conventions.old
        if conventions.old:
            assert attributes["rpc.grpc.status_code"] == grpc.StatusCode[code].value[0]
        assert attributes.get("rpc.response.status_code") == (code if conventions.stable else None)
        # error.type is the stable conventions' (new in them): the code, only when the call failed.
        assert attributes.get("error.type") == (code if conventions.stable and failed else None)


def test_the_environment_wins_over_finmesh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    plain = resource_for("payments", version="v1", color="blue").attributes
    assert (plain["service.name"], plain["service.version"], plain["deployment.color"]) == ("payments", "v1", "blue")
    assert plain["service.namespace"] == "finmesh" and plain["telemetry.sdk.name"] == "opentelemetry"

    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,deployment.color=green,team=pay%20ments")
    attributes = resource_for("payments", version="v1", color="blue").attributes
    assert (attributes["service.name"], attributes["deployment.color"]) == ("from-attrs", "green")
    assert attributes["team"] == "pay ments" and attributes["service.version"] == "v1"

    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments-canary")  # beats OTEL_RESOURCE_ATTRIBUTES' service.name too
    assert resource_for("payments", version="v1", color="blue").attributes["service.name"] == "payments-canary"


def test_otlp_adds_to_the_span_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert span_exporters("") == []
    assert [type(e) for e in span_exporters(str(tmp_path / "a.jsonl"))] == [JsonlSpanExporter]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    both = span_exporters(str(tmp_path / "b.jsonl"))
    assert sorted(type(e).__name__ for e in both) == ["JsonlSpanExporter", "MaskingExporter"]
    assert [type(e) for e in span_exporters("")] == [MaskingExporter]
    for exporter in both:
        exporter.shutdown()
