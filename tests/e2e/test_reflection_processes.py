"""Reflection of each service, in its own process, as generic clients (grpcurl, buf curl) use it.

In its own process a service's descriptor pool holds only what its code imported, so what reflection can
resolve differs from service to service; a test process imports every contract, hence real processes here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from finmesh.cli.mesh import Mesh
from finmesh.identity.v1 import identity_service_pb2
from finmesh.notify.v1 import notify_service_pb2
from finmesh.payments.v1 import payments_service_pb2
from finmesh.risk.v1 import risk_service_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SERVICES = {
    "identity": identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    "payments": payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    "risk": risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"],
    "notify": notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"],
}
# What a refusal carries (google.rpc.Status of ErrorInfo with a finmesh reason, BadRequest, RetryInfo).
DETAIL_TYPES = (
    "finmesh.common.v1.ErrorReason",
    "google.rpc.Status",
    "google.rpc.ErrorInfo",
    "google.rpc.BadRequest",
    "google.rpc.RetryInfo",
)
REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
# grpc.reflection.v1 is grpc.reflection.v1alpha renamed (same messages, same field numbers), so one set of
# message classes speaks both; only the method path differs. buf curl below is a v1 client of its own.
METHODS = {
    version: f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo" for version in ("v1", "v1alpha")
}
# buf comes with the dev dependencies (`make setup`), beside this Python.
BUF = Path(sys.executable).parent / "buf"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("reflection") / "mesh")
    m.start(timeout=60)
    yield m
    m.stop()


def _ask(
    target: str, version: str, requests: list[reflection_pb2.ServerReflectionRequest]
) -> list[reflection_pb2.ServerReflectionResponse]:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            METHODS[version],
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


def _resolves(response: reflection_pb2.ServerReflectionResponse, symbol: str) -> bool:
    """The files answered declare `symbol` and hold everything it needs (a client can build them in a pool)."""
    if not response.HasField("file_descriptor_response"):
        return False
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    pool, added = descriptor_pool.DescriptorPool(), set()
    while pending := [f for f in files if f.name not in added]:
        ready = [f for f in pending if set(f.dependency) <= added]
        if not ready:
            return False  # a dependency the server did not send
        for f in ready:
            pool.Add(f)
            added.add(f.name)
    try:
        pool.FindFileContainingSymbol(symbol)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@pytest.mark.parametrize("name", list(SERVICES))
def test_reflection_lists_and_resolves_every_type_a_caller_meets(mesh: Mesh, name: str, version: str) -> None:
    """Each service, on both reflection versions: lists its API, health and both reflection services, and
    resolves its requests and replies and every error detail type (so grpcurl decodes every refusal)."""
    service = SERVICES[name]
    messages = sorted({t.full_name for m in service.methods for t in (m.input_type, m.output_type)})
    symbols = [service.full_name, "grpc.health.v1.Health", *REFLECTION_SERVICES, *DETAIL_TYPES, *messages]
    responses = _ask(
        mesh.targets()[name],
        version,
        [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols),
        ],
    )

    listed = {s.name for s in responses[0].list_services_response.service}
    unlisted = {service.full_name, "grpc.health.v1.Health", *REFLECTION_SERVICES} - listed
    unresolved = [s for s, r in zip(symbols, responses[1:], strict=True) if not _resolves(r, s)]
    assert (unlisted, unresolved) == (set(), []), f"{name} ({version}): not listed, not resolved"


@pytest.mark.parametrize("version", ["grpc-v1", "grpc-v1alpha"])
def test_buf_curl_lists_services_over_each_reflection_version(mesh: Mesh, version: str) -> None:
    """An outside client (buf curl, told which reflection protocol to speak) lists payments' API."""
    listed = subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            version,
            "--list-services",
            f"http://{mesh.targets()['payments']}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert "finmesh.payments.v1.PaymentsService" in listed.stdout.split()
