"""Risk beside real payments and notify servers, wired both ways (risk freezes through payments)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import func, select

from finmesh.cli.mesh import free_port
from finmesh.notify import app as notify_app
from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.server import RunningServer
from finmesh.platform.runner import start_app
from finmesh.platform.storage.db import create_engine
from tests.auth import Issuer
from tests.auth import channel as acting_channel
from tests.risk.harness import RiskNode, cny, key, risk_node


@dataclass
class Running:
    app: Any
    server: RunningServer

    async def stop(self) -> None:
        await self.server.server.stop(0)
        await self.app.close()
        for authorizer in self.server.authorizers:
            await authorizer.close()


@asynccontextmanager
async def serving(app: Any, settings: ServiceSettings) -> AsyncIterator[Running]:
    running = Running(app, await start_app(app, settings))
    try:
        yield running
    finally:
        await running.stop()


def _common(tmp: Path, url: str, issuer: Issuer, name: str, port: int = 0) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "data_dir": tmp,
        "database_url": url,
        "shutdown_grace_seconds": 0.5,
        "service_name": name,
        **issuer.settings(),
    }


@dataclass
class Mesh:
    risk: RiskNode
    payments_settings: PaymentsSettings
    urls: dict[str, str]
    issuer: Issuer
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    payments: Running | None = None

    @property
    def payments_target(self) -> str:
        return f"127.0.0.1:{self.payments_settings.port}"

    def pay_stub(self) -> pay_grpc.PaymentsServiceStub:
        channel = acting_channel(self.payments_target, self.issuer)
        self.channels.append(channel)
        return pay_grpc.PaymentsServiceStub(channel)

    async def start_payments(self) -> None:
        app = await payments_app.build(self.payments_settings)
        self.payments = Running(app, await start_app(app, self.payments_settings))

    async def stop_payments(self) -> None:
        if self.payments is not None:
            await self.payments.stop()
            self.payments = None


@asynccontextmanager
async def risk_mesh(
    databases: Any, tmp: Path, risk_interceptors: list[Any] | None = None, **payments_extra: Any
) -> AsyncIterator[Mesh]:
    """notify, then risk and payments on reserved ports so each can name the other before it starts."""
    urls = {name: await databases.new(name) for name in ("notify", "risk", "payments")}
    risk_port, payments_port = free_port(), free_port()
    async with AsyncExitStack() as stack:
        issuer = await Issuer().start()
        stack.push_async_callback(issuer.stop)
        notify_settings = ServiceSettings(**_common(tmp, urls["notify"], issuer, "notify"))
        notify = await stack.enter_async_context(serving(await notify_app.build(notify_settings), notify_settings))
        notify_target = f"127.0.0.1:{notify.server.port}"
        payments_settings = PaymentsSettings(
            **_common(tmp, urls["payments"], issuer, "payments", payments_port),
            risk_target=f"127.0.0.1:{risk_port}",
            notify_target=notify_target,
            **payments_extra,
        )
        risk = await stack.enter_async_context(
            risk_node(
                urls["risk"],
                tmp,
                interceptors=risk_interceptors,
                issuer=issuer,
                port=risk_port,
                payments_target=f"127.0.0.1:{payments_port}",
                notify_target=notify_target,
            )
        )
        mesh = Mesh(risk, payments_settings, urls, issuer)
        await mesh.start_payments()
        try:
            yield mesh
        finally:
            for channel in mesh.channels:
                await channel.close()
            await mesh.stop_payments()


async def open_wallet(stub: pay_grpc.PaymentsServiceStub, owner: str, top_up: int = 0) -> str:
    account = (
        await stub.OpenAccount(
            pay_pb.OpenAccountRequest(
                idempotency_key=key(), owner_id=owner, kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET, currency_code="CNY"
            )
        )
    ).account.account_id
    if top_up:
        await stub.TopUp(
            pay_pb.TopUpRequest(idempotency_key=key(), account_id=account, channel="test_bank", amount=cny(top_up))
        )
    return account


async def count_rows(url: str, table: Any, *where: Any) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)
    finally:
        await engine.dispose()


async def settle_background(seconds: float = 0.3) -> None:
    """Give background workers (relays, responders) a moment to do anything they should not."""
    await asyncio.sleep(seconds)


def owner() -> str:
    return uuid.uuid4().hex
