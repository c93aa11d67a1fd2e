"""RPC metrics of the shared server and mesh channels: what each call records, by method and status code,
and the /metrics endpoint a real process serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from finmesh.platform.config import ServiceSettings
from finmesh.platform.errors import FailedPrecondition
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.server import Registration, create_server
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc
from tests import metrics
from tests.auth import Issuer
from tests.auth import channel as acting_channel

SERVICE = "finmesh.risk.v1.RiskService"
SERVER_DURATION = "rpc.server.call.duration"
CLIENT_DURATION = "rpc.client.call.duration"


class _Scripted(pb_grpc.RiskServiceServicer):
    """GetRules answers, fails or stalls as the test asks."""

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.stall = 0.0
        self.entered = asyncio.Event()

    async def GetRules(self, request, context):
        self.entered.set()
        if self.stall:
            await asyncio.sleep(self.stall)
        if self.failure is not None:
            raise self.failure
        return pb.GetRulesResponse(version="v1")


async def _serve(**overrides):
    servicer = _Scripted()
    issuer = await Issuer().start()
    settings = ServiceSettings(port=0, shutdown_grace_seconds=0.5, **{**issuer.settings(), **overrides})
    descriptor = pb.DESCRIPTOR.services_by_name["RiskService"]
    running = await create_server(
        settings, [Registration(servicer, pb_grpc.add_RiskServiceServicer_to_server, descriptor)]
    )
    return servicer, issuer, settings, running


@pytest.fixture
async def server():
    servicer, issuer, _, running = await _serve()
    channel = acting_channel(f"127.0.0.1:{running.port}", issuer)
    yield servicer, channel, running
    await channel.close()
    await running.server.stop(0)
    for authorizer in running.authorizers:
        await authorizer.close()
    await issuer.stop()


def _calls(code: str, method: str = "GetRules", name: str = SERVER_DURATION) -> float:
    return metrics.value(name, {"rpc.service": SERVICE, "rpc.method": method, "rpc.response.status_code": code})


async def test_each_call_is_counted_by_method_and_code(server) -> None:
    """An answered call and a refused one land in the duration histogram under their own status codes."""
    servicer, channel, _ = server
    stub = pb_grpc.RiskServiceStub(channel)
    ok, refused = _calls("OK"), _calls("FAILED_PRECONDITION")
    await stub.GetRules(pb.GetRulesRequest())
    servicer.failure = FailedPrecondition("RULES_LOCKED", "rules are being changed")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetRules(pb.GetRulesRequest())
    assert (_calls("OK") - ok, _calls("FAILED_PRECONDITION") - refused) == (1, 1)
    attributes = metrics.attribute_values(SERVER_DURATION, "rpc.system.name")
    assert attributes == {"grpc"}


async def test_a_bug_counts_as_internal_and_an_unauthenticated_caller_as_such(server) -> None:
    servicer, channel, running = server
    internal, unauthenticated = _calls("INTERNAL"), _calls("UNAUTHENTICATED")
    servicer.failure = RuntimeError("boom")
    with pytest.raises(grpc.aio.AioRpcError):
        await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.RiskServiceStub(anonymous).GetRules(pb.GetRulesRequest())
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (_calls("INTERNAL") - internal, _calls("UNAUTHENTICATED") - unauthenticated) == (1, 1)


async def test_a_call_past_its_deadline_counts_as_deadline_exceeded_and_a_refusal(server) -> None:
    """The handler is cancelled by gRPC when the caller's deadline passes: recorded, not lost, and the
    in-flight gauge comes back down."""
    servicer, channel, _ = server
    servicer.stall = 1.0
    before = _calls("DEADLINE_EXCEEDED")
    refusals = metrics.value("finmesh.rpc.server.refusals", reason="DEADLINE_EXCEEDED")
    call = asyncio.ensure_future(pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest(), timeout=0.3))
    await servicer.entered.wait()
    assert metrics.value("finmesh.rpc.server.active_calls", {"rpc.method": "GetRules"}) >= 1
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    for _ in range(50):  # the server side finishes a moment after the client gives up
        if _calls("DEADLINE_EXCEEDED") > before:
            break
        await asyncio.sleep(0.05)
    assert _calls("DEADLINE_EXCEEDED") - before == 1
    assert metrics.value("finmesh.rpc.server.refusals", reason="DEADLINE_EXCEEDED") - refusals == 1
    assert metrics.value("finmesh.rpc.server.active_calls", {"rpc.method": "GetRules"}) == 0


async def test_rate_limited_calls_are_refusals_by_reason() -> None:
    _, issuer, _, running = await _serve(rate_limit_per_caller_rps=1, rate_limit_per_caller_burst=1)
    try:
        before = metrics.value("finmesh.rpc.server.refusals", reason="RATE_LIMITED")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as anonymous:
            stub = pb_grpc.RiskServiceStub(anonymous)
            codes = []
            for _ in range(3):
                try:
                    await stub.GetRules(pb.GetRulesRequest())
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2
        assert metrics.value("finmesh.rpc.server.refusals", reason="RATE_LIMITED") - before == 2
    finally:
        await running.server.stop(0)
        for authorizer in running.authorizers:
            await authorizer.close()
        await issuer.stop()


async def test_mesh_channels_record_client_durations_by_callee_and_code() -> None:
    """A mesh client records its calls, including the ones that never reached a server."""
    _, issuer, settings, running = await _serve(auth_mode="off")
    try:
        ok = _calls("OK", name=CLIENT_DURATION)
        unavailable = _calls("UNAVAILABLE", name=CLIENT_DURATION)
        channel = open_channel(f"127.0.0.1:{running.port}", settings)
        await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest(), timeout=2)
        await channel.close()
        await running.server.stop(0)
        gone = open_channel(f"127.0.0.1:{running.port}", settings)
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.RiskServiceStub(gone).GetRules(pb.GetRulesRequest(), timeout=1)
        await gone.close()
        assert _calls("OK", name=CLIENT_DURATION) - ok == 1
        assert _calls("UNAVAILABLE", name=CLIENT_DURATION) - unavailable == 1
    finally:
        await running.server.stop(0)
        await issuer.stop()


async def test_metrics_off_records_nothing() -> None:
    _, issuer, _, running = await _serve(auth_mode="off", metrics_enabled=False)
    try:
        before = _calls("OK")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as plain:
            await pb_grpc.RiskServiceStub(plain).GetRules(pb.GetRulesRequest())
        assert _calls("OK") == before
    finally:
        await running.server.stop(0)
        await issuer.stop()


_EXPOSITION = """
import json, sys, urllib.request
import grpc
from finmesh.platform.observability.metrics import setup_metrics
from finmesh.platform.observability.rpc_metrics import ServerCallMetrics
endpoint = setup_metrics("payments", version="1.2.3", color="green", host="127.0.0.1", port=0)
calls = ServerCallMetrics("/finmesh.payments.v1.PaymentService/CreatePayment")
calls.finish(calls.start(), grpc.StatusCode.OK)
print(urllib.request.urlopen(endpoint.address, timeout=5).read().decode())
endpoint.shutdown()
"""


def test_metrics_endpoint_serves_prometheus_exposition_with_resource_labels() -> None:
    """A process's /metrics carries the conventions' names and its service, version and color on each series."""
    text = subprocess.run(
        [sys.executable, "-c", _EXPOSITION], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("rpc_server_call_duration_seconds_bucket") and 'le="0.25"' in line
    )
    for label in (
        'service_name="payments"',
        'service_version="1.2.3"',
        'deployment_color="green"',
        'rpc_method="CreatePayment"',
        'rpc_service="finmesh.payments.v1.PaymentService"',
        'rpc_response_status_code="OK"',
    ):
        assert label in line
    assert line.endswith(" 1.0")
    assert "otel_scope_name" not in text  # no scope labels: the names say who recorded them


_OTLP = """
import grpc
from finmesh.platform.observability.metrics import setup_metrics
from finmesh.platform.observability.rpc_metrics import ServerCallMetrics
endpoint = setup_metrics("risk", version="2.0.0", color="blue", host="127.0.0.1", port=None)
calls = ServerCallMetrics("/finmesh.risk.v1.RiskService/AssessPayment")
calls.finish(calls.start(), grpc.StatusCode.UNAVAILABLE)
endpoint.shutdown()  # flushes the periodic reader: one export before the process ends
"""


class _Collector(metrics_service_pb2_grpc.MetricsServiceServicer):
    """A bare OTLP/gRPC metrics receiver, as a collector listens on 4317."""

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    async def Export(self, request, context):
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def test_otlp_export_when_an_endpoint_is_configured() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT adds OTLP export: the collector gets the RPC histogram with the resource."""
    collector = _Collector()
    server = grpc.aio.server()
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
        process = await asyncio.create_subprocess_exec(sys.executable, "-c", _OTLP, env=env)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        await server.stop(0)
    exported = [
        (resource_metrics.resource, metric)
        for request in collector.requests
        for resource_metrics in request.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
    ]
    durations = [(r, m) for r, m in exported if m.name == "rpc.server.call.duration"]
    assert durations, [m.name for _, m in exported]
    resource, metric = durations[0]
    attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert (
        attributes.items() >= {"service.name": "risk", "service.version": "2.0.0", "deployment.color": "blue"}.items()
    )
    (point,) = metric.histogram.data_points
    assert point.count == 1
    assert {a.key: a.value.string_value for a in point.attributes}["rpc.response.status_code"] == "UNAVAILABLE"
