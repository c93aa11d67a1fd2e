"""A no-op gRPC hop for benchmarks: answers after (optionally) calling the next hop.

Run as a process: `python -m bench.chain PORT [NEXT_TARGET]`. BENCH_TRACING
picks the tracing: "off"; "lean", the platform's own (the servicer guard
opens server spans, the channel's interceptor client spans) exactly as the
services run it; or "stock", the opentelemetry-instrumentation-grpc
interceptors, kept as a reference. Spans go to FINMESH_SPAN_FILE.
"""

from __future__ import annotations

import asyncio
import os
import sys

import grpc

from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability.telemetry import setup_tracing
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.guard import guarded
from finmesh.platform.rpc.server import wait_for_termination_signal

METHOD = "/finmesh.bench.v1.ChainService/Hop"


def _identity(data: bytes) -> bytes:
    return data


async def serve(port: int, next_target: str) -> None:
    mode = os.environ.get("BENCH_TRACING", "off")
    # The chain measures what tracing costs an empty hop; tokens are not part of it (the hops
    # check none), so the outgoing channel must not try to fetch a service token either.
    settings = ServiceSettings(tracing_enabled=mode == "lean", auth_mode="off")
    provider = None
    if mode != "off":
        provider = setup_tracing(f"hop-{port}", version="bench", color="bench", span_file=settings.span_file)
    call_next = None
    channel = None
    if next_target:
        if mode == "stock":
            from opentelemetry.instrumentation.grpc import aio_client_interceptors

            channel = grpc.aio.insecure_channel(next_target, interceptors=aio_client_interceptors())
        else:
            channel = open_channel(next_target, settings)
        call_next = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)

    async def hop(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if call_next is not None:
            return await call_next(request, timeout=5)
        return request

    interceptors = []
    if mode == "stock":
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptors.append(aio_server_interceptor())
    server = grpc.aio.server(interceptors=interceptors)
    behavior = guarded(hop, METHOD, traced=mode == "lean")
    handler = grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("finmesh.bench.v1.ChainService", {"Hop": handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await wait_for_termination_signal()
    await server.stop(1)
    if channel is not None:
        await channel.close()
    if provider is not None:
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""))
