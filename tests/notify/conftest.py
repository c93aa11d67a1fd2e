"""Notify fixtures: the fake SMTP server, SMS provider and webhook receiver, and notify on an ephemeral port."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from finmesh.fakes.sms import FakeSmsProvider
from finmesh.fakes.smtp import FakeSmtpServer
from finmesh.fakes.webhook import FakeWebhookReceiver
from finmesh.notify import app as notify_app
from finmesh.notify.config import NotifySettings
from finmesh.notify.usecases.clock import Clock
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2_grpc as pb_grpc
from finmesh.platform.rpc.server import RunningServer
from finmesh.platform.runner import start_app
from tests.auth import Issuer
from tests.auth import channel as acting_channel

OPERATOR_EMAIL = "ops@finmesh.test"


class SqliteDatabases:
    """Fresh SQLite files, with the interface of the shared `databases` fixture (kind, new)."""

    kind = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path

    async def new(self, label: str) -> str:
        return f"sqlite+aiosqlite:///{self._tmp / (label + '-' + uuid.uuid4().hex[:6] + '.db')}"


@pytest.fixture
def sqlite_databases(tmp_path: Path) -> SqliteDatabases:
    """For tests whose subject does not depend on storage (validation, tracing, calendar arithmetic, the
    CLI's argument handling): they run once, on SQLite, instead of being parametrized over both databases
    and skipping the PostgreSQL half, so CI shows no skip for something it could have run."""
    return SqliteDatabases(tmp_path)


@pytest.fixture
async def smtp() -> AsyncIterator[FakeSmtpServer]:
    server = await FakeSmtpServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def sms() -> AsyncIterator[FakeSmsProvider]:
    provider = await FakeSmsProvider().start()
    yield provider
    await provider.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[FakeWebhookReceiver]:
    hook = await FakeWebhookReceiver().start()
    yield hook
    await hook.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Notify:
    app: Any
    server: RunningServer
    channel: grpc.aio.Channel
    stub: pb_grpc.NotifyServiceStub
    database_url: str
    issuer: Issuer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def notification(self, notification_id: str) -> pb.Notification:
        reply = await self.stub.GetNotification(pb.GetNotificationRequest(notification_id=notification_id))
        return reply.notification

    async def wait_status(self, notification_id: str, status: int, timeout: float = 10.0) -> pb.Notification:
        """Poll until the notification reaches `status` (the worker sends in the background)."""
        return await eventually(lambda: self.notification(notification_id), lambda n: n.status == status, timeout)


async def eventually(fetch: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = await fetch()
        if ok(value):
            return value
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value}")
        await asyncio.sleep(0.05)


def settings_for(
    database_url: str,
    tmp: Path,
    *,
    smtp: FakeSmtpServer | None = None,
    sms: FakeSmsProvider | None = None,
    port: int = 0,
    **overrides: Any,
) -> NotifySettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": tmp,
        "database_url": database_url,
        "shutdown_grace_seconds": 1.0,
        # Fast retries so a test sees several attempts in well under a second.
        "delivery_base_backoff_seconds": 0.05,
        "delivery_max_backoff_seconds": 0.2,
        "delivery_max_attempts": 4,
        "webhook_max_attempts": 4,
        "worker_poll_seconds": 0.1,
        "sla_check_seconds": 3600.0,  # tests sweep explicitly
        "operator_emails": [OPERATOR_EMAIL],
    }
    if smtp is not None:
        values.update(smtp_host="127.0.0.1", smtp_port=smtp.port)
    if sms is not None:
        values.update(sms_url=sms.url, sms_api_key=sms.api_key)
    values.update(overrides)
    return NotifySettings(**values)


@asynccontextmanager
async def running_notify(
    databases: Any,
    tmp: Path,
    *,
    clock: Clock | None = None,
    database_url: str = "",
    issuer: Issuer | None = None,
    **kwargs: Any,
) -> AsyncIterator[Notify]:
    """Notify with auth enforced (keys from `issuer`, one started when not given); its client channel
    presents each RPC's production caller (tests.auth)."""
    async with AsyncExitStack() as stack:
        if issuer is None:
            issuer = await Issuer().start()
            stack.push_async_callback(issuer.stop)
        url = database_url or await databases.new("notify")
        settings = settings_for(url, tmp, **{"service_name": "notify", **issuer.settings(), **kwargs})
        app = await notify_app.build(settings, clock=clock)
        server = await start_app(app, settings)
        channel = acting_channel(f"127.0.0.1:{server.port}", issuer)
        try:
            yield Notify(app, server, channel, pb_grpc.NotifyServiceStub(channel), url, issuer)
        finally:
            await channel.close()
            await server.server.stop(0)
            await app.close()
            for authorizer in server.authorizers:
                await authorizer.close()
