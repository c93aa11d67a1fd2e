"""The shared server: health, reflection, drain, and how errors reach callers and spans."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.trace import StatusCode

from finmesh.platform.config import ServiceSettings
from finmesh.platform.errors import FailedPrecondition, FieldViolation, InvalidArgument
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from finmesh.platform.rpc.server import Registration, create_server
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc
from tests.auth import Issuer
from tests.auth import channel as acting_channel
from tests.reliability.tcp_proxy import TcpProxy


class _Scripted(pb_grpc.RiskServiceServicer):
    """A servicer whose GetRules fails the way the test asks, to exercise the platform alone."""

    def __init__(self) -> None:
        self.failure: Exception | None = None

    async def GetRules(self, request, context):
        if self.failure is not None:
            raise self.failure
        return pb.GetRulesResponse(version="v1")


@pytest.fixture
async def server():
    servicer = _Scripted()
    issuer = await Issuer().start()
    settings = ServiceSettings(port=0, drain_delay_seconds=0, shutdown_grace_seconds=0.5, **issuer.settings())
    running = await create_server(
        settings,
        [
            Registration(
                servicer, pb_grpc.add_RiskServiceServicer_to_server, pb.DESCRIPTOR.services_by_name["RiskService"]
            )
        ],
    )
    channel = acting_channel(f"127.0.0.1:{running.port}", issuer)  # GetRules as a risk officer
    yield running, servicer, channel, settings
    await channel.close()
    await running.server.stop(0)
    for authorizer in running.authorizers:
        await authorizer.close()
    await issuer.stop()


async def test_health_reports_serving_for_server_and_service(server) -> None:
    """Health answers SERVING overall and for the named service (what Kubernetes' gRPC probe asks)."""
    _, _, channel, _ = server
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "finmesh.risk.v1.RiskService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(server) -> None:
    """Reflection lets generic clients (buf curl, grpcurl) discover the API."""
    _, _, channel, _ = server
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for response in responses:
        names |= {s.name for s in response.list_services_response.service}
    assert {"finmesh.risk.v1.RiskService", "grpc.health.v1.Health"} <= names


async def test_drain_reports_not_serving_before_stopping(server) -> None:
    """On drain, health flips to NOT_SERVING first, so balancers stop routing before calls are refused."""
    running, _, channel, _ = server
    health = health_pb2_grpc.HealthStub(channel)
    await running.set_serving(False)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="finmesh.risk.v1.RiskService"))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # In-flight and new calls still work until stop: draining refuses nothing by itself.
    assert (await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest())).version == "v1"


async def test_domain_error_becomes_status_with_details_and_error_span(server, spans) -> None:
    """A refusal carries its code, reason and field violations; the server span records the real code.

    (Per the OTel gRPC conventions a server span's status stays UNSET for caller errors such as
    FAILED_PRECONDITION; the code itself is the attribute to split figures by.)
    """
    _, servicer, channel, _ = server
    stub = pb_grpc.RiskServiceStub(channel)
    servicer.failure = InvalidArgument([FieldViolation("version", "bad"), FieldViolation("source", "worse")])
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.GetRules(pb.GetRulesRequest())
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations_of(bad.value) == ["version", "source"]
    assert reason_of(bad.value) == "VALIDATION_FAILED"

    servicer.failure = FailedPrecondition("INSUFFICIENT_FUNDS", "not enough")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetRules(pb.GetRulesRequest())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "INSUFFICIENT_FUNDS"
    server_spans = [s for s in spans.get_finished_spans() if s.name.endswith("/GetRules") and s.kind.name == "SERVER"]
    codes = [s.attributes["rpc.grpc.status_code"] for s in server_spans]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.FAILED_PRECONDITION.value[0]]


async def test_internal_error_marks_server_span_as_error(server, spans) -> None:
    """Server-side faults (INTERNAL, UNAVAILABLE) set the span status to ERROR."""
    _, servicer, channel, _ = server
    servicer.failure = RuntimeError("boom")
    with pytest.raises(grpc.aio.AioRpcError):
        await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest())
    server_spans = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert [s.attributes["rpc.grpc.status_code"] for s in server_spans] == [grpc.StatusCode.INTERNAL.value[0]]
    assert server_spans[0].status.status_code == StatusCode.ERROR


async def test_unexpected_bug_is_bare_internal_without_stack_trace(server) -> None:
    """A bug answers INTERNAL with a fixed message: no exception text, no stack trace leaves the server."""
    _, servicer, channel, _ = server
    servicer.failure = KeyError("secret-internal-detail")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest())
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.details() == "internal error"
    assert "secret" not in str(failed.value.debug_error_string())


async def test_connection_loss_is_unavailable(server) -> None:
    """A lost database connection answers UNAVAILABLE: nothing committed, safe to retry."""
    _, servicer, channel, _ = server
    servicer.failure = ConnectionResetError("db went away")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest())
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def _risk_server(issuer: Issuer, identity_target: str):
    settings = ServiceSettings(
        port=0,
        shutdown_grace_seconds=0.5,
        call_timeout_seconds=0.3,
        **{**issuer.settings(), "identity_target": identity_target},
    )
    return await create_server(
        settings,
        [
            Registration(
                _Scripted(), pb_grpc.add_RiskServiceServicer_to_server, pb.DESCRIPTOR.services_by_name["RiskService"]
            )
        ],
    )


async def _stop(running) -> None:
    await running.server.stop(0)
    for authorizer in running.authorizers:
        await authorizer.close()


async def test_keys_are_fetched_at_start_so_calls_verify_while_identity_is_away() -> None:
    issuer = await Issuer().start()
    identity = await TcpProxy(issuer.server.port).start()
    running = await _risk_server(issuer, identity.target)
    channel = acting_channel(f"127.0.0.1:{running.port}", issuer)
    try:
        async with asyncio.timeout(5):
            while issuer.keys_served == 0:
                await asyncio.sleep(0.01)
        identity.blackhole()  # after the start-up fetch, before any call
        assert (await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest(), timeout=5)).version == "v1"
    finally:
        await channel.close()
        await _stop(running)
        await identity.stop()
        await issuer.stop()


async def test_before_any_key_is_fetched_an_unreachable_identity_is_a_retryable_refusal() -> None:
    """Not TOKEN_INVALID: a client does not retry a refused token, and this one is good."""
    issuer = await Issuer().start()
    identity = await TcpProxy(issuer.server.port).start()
    identity.blackhole()
    running = await _risk_server(issuer, identity.target)
    channel = acting_channel(f"127.0.0.1:{running.port}", issuer)
    stub = pb_grpc.RiskServiceStub(channel)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetRules(pb.GetRulesRequest(), timeout=5)
        assert (refused.value.code(), reason_of(refused.value)) == (
            grpc.StatusCode.UNAVAILABLE,
            "AUTH_KEYS_UNAVAILABLE",
        )
        identity.heal()
        assert (await stub.GetRules(pb.GetRulesRequest(), timeout=5)).version == "v1"
    finally:
        await channel.close()
        await _stop(running)
        await identity.stop()
        await issuer.stop()
