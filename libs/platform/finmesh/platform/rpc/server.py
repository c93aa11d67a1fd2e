"""gRPC aio server bootstrap: health, reflection (v1 and v1alpha), tracing and metrics, bounded connection age,
graceful drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from finmesh.platform.auth.access import remote_authorizer
from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.observability.ratelimit_metrics import start_fallback_series
from finmesh.platform.observability.rpc_metrics import start_refusal_series
from finmesh.platform.observability.rpc_tracing import ServerEndpoint
from finmesh.platform.rpc.decoding import tolerant_server
from finmesh.platform.rpc.guard import guard_servicer
from finmesh.platform.rpc.ratelimit import LimitedAuthorizer, RateLimiter
from finmesh.platform.rpc.reflection import enable_reflection
from finmesh.platform.rpc.tls import TlsFiles, server_credentials

_log = get_logger("finmesh.server")


@dataclass
class Registration:
    """One gRPC service to serve: its servicer, the generated add function and its descriptor."""

    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    descriptor: Any  # google.protobuf.descriptor.ServiceDescriptor
    # Checks callers when FINMESH_AUTH_MODE=enforce; None: keys fetched from identity
    # (finmesh.platform.auth.access.remote_authorizer). Identity passes one over its own keys.
    authorizer: Any = None


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str] = field(default_factory=list)
    authorizers: list[Any] = field(default_factory=list)
    probe_server: grpc.aio.Server | None = None
    limiter: RateLimiter | None = None

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def drain(self, settings: ServiceSettings) -> None:
        """Report NOT_SERVING, wait for balancers to notice, then stop with a grace period.

        The server keeps serving through the delay because stop() is the only GOAWAY grpc.aio can send
        (besides max connection age), and at stop() grpc's C-core cancels, with CANCELLED rather than
        UNAVAILABLE, the calls it holds not yet handed to a handler and those arriving before the
        client reads the GOAWAY (https://github.com/grpc/grpc/issues/41785). No handler ran for them:
        callers retry them (mesh channels on idempotent methods; clients with an idempotency key).
        """
        await self.set_serving(False)
        if settings.drain_delay_seconds:
            await asyncio.sleep(settings.drain_delay_seconds)
        await self.server.stop(settings.shutdown_grace_seconds)
        if self.probe_server is not None:
            await self.probe_server.stop(0)
        for authorizer in self.authorizers:
            await authorizer.close()
        if self.limiter is not None:
            await self.limiter.close()


def server_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    age_ms = settings.max_connection_age_seconds * 1000
    return [
        # Bounded connection age sends GOAWAY, so clients pinned to an old
        # color reconnect (through the Service) after a blue-green flip.
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", int(settings.shutdown_grace_seconds * 1000)),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ]


async def create_server(
    settings: ServiceSettings,
    registrations: list[Registration],
    *,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
) -> RunningServer:
    """Build and start a server on settings.host:settings.port (0 = any free port)."""
    # Tracing and metrics are not interceptors: guard_servicer opens each RPC's server span and records its
    # duration (see rpc_tracing, rpc_metrics).
    server = grpc.aio.server(
        interceptors=list(interceptors or []),
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    limiter = RateLimiter.from_settings(settings)
    if settings.metrics_enabled:
        start_refusal_series()
        start_fallback_series()
    names = []
    authorizers = []
    endpoint = ServerEndpoint()  # server.address / server.port of the spans, once the port is bound
    for reg in registrations:
        authorizer = None
        if settings.auth_mode == "enforce":
            authorizer = reg.authorizer or remote_authorizer(settings)
            authorizers.append(authorizer)
        if limiter is not None:
            # One limiter per server: a caller's bucket is shared by all the services it hosts.
            authorizer = LimitedAuthorizer(authorizer, limiter)
        reg.add_to_server(
            guard_servicer(
                reg.servicer,
                reg.descriptor,
                traced=settings.tracing_enabled,
                metered=settings.metrics_enabled,
                authorizer=authorizer,
                endpoint=endpoint,
            ),
            tolerant_server(server),
        )
        names.append(reg.descriptor.full_name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [reg.descriptor for reg in registrations])
    address = f"{settings.host}:{settings.port}"
    tls = TlsFiles.from_settings(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    port = server.add_secure_port(address, server_credentials(tls)) if tls else server.add_insecure_port(address)
    endpoint.bind(settings.host, port)
    await server.start()
    for authorizer in authorizers:
        authorizer.warm()
    probe_server = await _start_probe_server(settings, health_servicer) if tls and settings.health_port else None
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        service_names=names,
        authorizers=authorizers,
        probe_server=probe_server,
        limiter=limiter,
    )
    await running.set_serving(True)
    return running


async def _start_probe_server(settings: ServiceSettings, health_servicer: Any) -> grpc.aio.Server:
    """Plaintext health only, sharing the main server's health state (so drain shows here too)."""
    probe = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe)
    probe.add_insecure_port(f"{settings.host}:{settings.health_port}")
    await probe.start()
    return probe


async def wait_for_termination_signal() -> None:
    """Resolve on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
