"""The mesh channel's retry policy across a callee's drain: idempotent calls are not lost to it."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finmesh.drill.forwarder import Forwarder
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.server import RunningServer, create_server

# Health.Check stands in for an idempotent method; 32 callers keep calls queued in the server at stop().
HEALTH_CHECK = ("grpc.health.v1.Health", "Check")
CALLERS = 32
SETTINGS = ServiceSettings(
    port=0, auth_mode="off", tracing_enabled=False, drain_delay_seconds=0.3, shutdown_grace_seconds=2
)


async def _call_until(stop: asyncio.Event, channel: grpc.aio.Channel, outcomes: Counter[str]) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    while not stop.is_set():
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            outcomes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            outcomes[error.code().name] += 1


async def _drain_under_calls(old: RunningServer, new: RunningServer) -> Counter[str]:
    """Callers go through a forwarder (the Service); flip it to `new`, drain `old`, keep calling a moment."""
    forwarder = Forwarder(f"127.0.0.1:{old.port}")
    await forwarder.start()
    channel = open_channel(forwarder.target, SETTINGS, idempotent_methods=[HEALTH_CHECK])
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()
    callers = [asyncio.create_task(_call_until(stop, channel, outcomes)) for _ in range(CALLERS)]
    try:
        await asyncio.sleep(0.5)
        forwarder.switch(f"127.0.0.1:{new.port}")
        await old.drain(SETTINGS)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*callers)
        await channel.close()
        await forwarder.close()
    return outcomes


async def test_idempotent_calls_survive_a_drain_of_the_callee() -> None:
    """grpc's server cancels (CANCELLED, not UNAVAILABLE) the calls it holds undispatched when stop() begins
    (https://github.com/grpc/grpc/issues/41785); the channel retries them, so every call is answered."""
    old, new = await create_server(SETTINGS, []), await create_server(SETTINGS, [])
    try:
        outcomes = await _drain_under_calls(old, new)
    finally:
        await new.server.stop(0)
        await old.server.stop(0)
    assert outcomes["OK"] > 0 and set(outcomes) == {"OK"}, outcomes
