"""Mutual TLS on the shared server: who gets in, the plaintext probe port, certificate renewal without restart."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finmesh.cli.mesh import free_port
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.server import Registration, create_server
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc
from tests.pki import issue, write_pair

NAME = "risk.finmesh.test"


class _Rules(pb_grpc.RiskServiceServicer):
    async def GetRules(self, request, context):
        return pb.GetRulesResponse(version="v1")


def _ca(directory: Path, label: str) -> dict[str, Path]:
    """A CA with a server certificate for NAME and a client certificate, written as files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = issue(f"{label} CA")
    ca_cert, _ = write_pair(directory, "ca", ca)
    server_cert, server_key = write_pair(directory, "server", issue("risk", ca, dns=NAME))
    client_cert, client_key = write_pair(directory, "client", issue("payments", ca))
    return {
        "ca": ca_cert,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


@pytest.fixture
async def tls_server(tmp_path: Path):
    first = _ca(tmp_path / "first", "first")
    live = tmp_path / "live"  # what the server reads: a mounted Secret stand-in
    live.mkdir()
    for name in ("ca", "server_cert", "server_key"):
        (live / name).write_bytes(first[name].read_bytes())
    settings = ServiceSettings(
        port=0,
        health_port=free_port(),
        auth_mode="off",
        tracing_enabled=False,
        tls_cert_file=str(live / "server_cert"),
        tls_key_file=str(live / "server_key"),
        tls_ca_file=str(live / "ca"),
    )
    running = await create_server(
        settings,
        [
            Registration(
                _Rules(), pb_grpc.add_RiskServiceServicer_to_server, pb.DESCRIPTOR.services_by_name["RiskService"]
            )
        ],
    )
    yield running, settings, first, live, tmp_path
    await running.drain(ServiceSettings(shutdown_grace_seconds=0))


async def _get_rules(port: int, creds: grpc.ChannelCredentials | None) -> str:
    target = f"127.0.0.1:{port}"
    options = [("grpc.ssl_target_name_override", NAME)]
    channel = grpc.aio.secure_channel(target, creds, options=options) if creds else grpc.aio.insecure_channel(target)
    async with channel:
        return (await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest(), timeout=3)).version


def _client(files: dict[str, Path], *, with_cert: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=files["ca"].read_bytes(),
        private_key=files["client_key"].read_bytes() if with_cert else None,
        certificate_chain=files["client_cert"].read_bytes() if with_cert else None,
    )


async def test_client_with_certificate_from_the_ca_gets_in(tls_server) -> None:
    running, _, first, _, _ = tls_server
    assert await _get_rules(running.port, _client(first)) == "v1"


async def test_plaintext_no_certificate_and_wrong_ca_are_refused(tls_server) -> None:
    """Plaintext, a TLS client without a certificate, and a certificate from another CA never reach the RPC."""
    running, _, first, _, tmp = tls_server
    other = _ca(tmp / "other", "other")
    stranger = grpc.ssl_channel_credentials(
        root_certificates=first["ca"].read_bytes(),
        private_key=other["client_key"].read_bytes(),
        certificate_chain=other["client_cert"].read_bytes(),
    )
    for creds in (None, _client(first, with_cert=False), stranger):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _get_rules(running.port, creds)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_probe_port_serves_health_only(tls_server) -> None:
    """The kubelet's gRPC probe cannot do mTLS: health alone is served in plaintext on its own port."""
    running, settings, _, _, _ = tls_server
    async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await pb_grpc.RiskServiceStub(channel).GetRules(pb.GetRulesRequest(), timeout=3)
        assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await running.set_serving(False)  # draining shows on the probe port too
    async with grpc.aio.insecure_channel(f"127.0.0.1:{settings.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_renewed_certificates_apply_without_restart(tls_server) -> None:
    """Replacing the files switches new connections to the new CA; clients of the old CA are then refused."""
    running, _, first, live, tmp = tls_server
    assert await _get_rules(running.port, _client(first)) == "v1"
    second = _ca(tmp / "second", "second")
    for name in ("ca", "server_cert", "server_key"):
        (live / name).write_bytes(second[name].read_bytes())
    assert await _get_rules(running.port, _client(second)) == "v1"
    with pytest.raises(grpc.aio.AioRpcError):
        await _get_rules(running.port, _client(first))
