"""The shared RabbitMQ for tests: a vhost of its own per test (created, then deleted with everything in it).

`rabbitmq` gives a test a `Vhost`; `events_transport` runs a test once per events transport (grpc, then
rabbitmq with its own vhost). Outages go through tests/reliability/tcp_proxy.TcpProxy in front of the broker,
never by stopping the shared server. When no broker answers on 127.0.0.1:5672 the tests skip, under CI=true
they fail.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from yarl import URL

from finmesh.cli.broker import create_vhost, delete_vhost
from finmesh.platform.messaging.rabbitmq.topology import Broker, declare_consumer

BROKER_URL = os.environ.get("FINMESH_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
REQUIRED = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Vhost:
    name: str
    port: int = URL(BROKER_URL).port or 5672

    def url(self, port: int | None = None) -> str:
        """The broker URL on this vhost; `port` to go through a proxy."""
        return str(URL(BROKER_URL).with_port(port or self.port).with_path("/" + self.name))

    def settings(self, port: int | None = None, **extra: Any) -> dict[str, Any]:
        """ServiceSettings fields for the rabbitmq transport on this vhost."""
        return {"events_transport": "rabbitmq", "rabbitmq_url": self.url(port), **extra}

    def env(self, port: int | None = None) -> dict[str, str]:
        return {"FINMESH_EVENTS_TRANSPORT": "rabbitmq", "FINMESH_RABBITMQ_URL": self.url(port)}

    def broker(self, port: int | None = None, **extra: Any) -> Broker:
        return Broker(url=self.url(port), **extra)

    async def declare(self, consumer: str, bindings: list[tuple[str, str]], **extra: Any) -> None:
        """The consumer's queues as its first start leaves them (a deployment's consumers ran before)."""
        connection = await self.broker(**extra).connect()
        async with connection:
            await declare_consumer(await connection.channel(), self.broker(**extra), consumer, bindings)

    async def depth(self, queue: str) -> int:
        """Messages ready in `queue` (not counting those delivered and unacknowledged)."""
        connection = await self.broker().connect()
        async with connection:
            declared = await (await connection.channel()).declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)


def _answers() -> bool:
    url = URL(BROKER_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5672), timeout=2).close()
    except OSError:
        return False
    return True


async def _vhost() -> AsyncIterator[Vhost]:
    if not _answers():
        message = f"no RabbitMQ answers at {URL(BROKER_URL).host}:{URL(BROKER_URL).port}"
        if REQUIRED:
            pytest.fail(message + "; CI requires it")
        pytest.skip(message)
    vhost = Vhost(f"fmtest-{uuid.uuid4().hex[:10]}")
    await asyncio.to_thread(create_vhost, vhost.name, BROKER_URL)
    try:
        yield vhost
    finally:
        await asyncio.to_thread(delete_vhost, vhost.name, BROKER_URL)


@pytest.fixture
async def rabbitmq() -> AsyncIterator[Vhost]:
    """A vhost of the test's own on the shared broker."""
    async for vhost in _vhost():
        yield vhost


@pytest.fixture(params=["grpc", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def events_transport(request: pytest.FixtureRequest) -> AsyncIterator[Vhost | None]:
    """None for the gRPC relay; a Vhost for the rabbitmq transport."""
    if request.param == "grpc":
        yield None
        return
    async for vhost in _vhost():
        yield vhost
