"""Risk test harness: risk servers on ephemeral ports, rules built from the packaged default, request helpers."""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from finmesh.common.v1 import money_pb2
from finmesh.platform.rpc.server import RunningServer, create_server
from finmesh.platform.runner import start_app
from finmesh.risk import app as risk_app
from finmesh.risk.config import DEFAULT_RULES_FILE, RiskSettings
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc
from tests.auth import Issuer
from tests.auth import channel as acting_channel

DEFAULT_RULES: dict[str, Any] = yaml.safe_load(DEFAULT_RULES_FILE.read_text(encoding="utf-8"))


def rules_dict(version: str, **sections: Any) -> dict[str, Any]:
    """The packaged default with whole top-level sections replaced."""
    rules = copy.deepcopy(DEFAULT_RULES)
    rules.update(copy.deepcopy(sections))
    rules["version"] = version
    return rules


def rules_yaml(version: str, **sections: Any) -> str:
    return yaml.safe_dump(rules_dict(version, **sections), sort_keys=False)


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, as a ConfigMap update does, so a poll never reads half a file."""
    tmp = path.with_suffix(f".{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cny(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="CNY", minor_units=minor)


def key() -> str:
    return uuid.uuid4().hex


def payment(user: str = "", minor: int = 10_000, **fields: Any) -> pb.AssessPaymentRequest:
    return pb.AssessPaymentRequest(
        payment_id=fields.pop("payment_id", uuid.uuid4().hex),
        payer_user_id=user or uuid.uuid4().hex,
        payer_account_id=fields.pop("payer_account_id", "acct-" + uuid.uuid4().hex[:12]),
        payee_account_id=fields.pop("payee_account_id", "acct-payee"),
        amount=fields.pop("amount", cny(minor)),
        **fields,
    )


@dataclass
class RiskNode:
    app: Any
    server: RunningServer
    channel: grpc.aio.Channel
    issuer: Issuer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def stub(self) -> pb_grpc.RiskServiceStub:
        return pb_grpc.RiskServiceStub(self.channel)

    async def assess(self, request: pb.AssessPaymentRequest) -> pb.Assessment:
        return (await self.stub.AssessPayment(request, timeout=10)).assessment


def settings(url: str, tmp: Path, **extra: Any) -> RiskSettings:
    return RiskSettings(
        host="127.0.0.1",
        port=extra.pop("port", 0),
        data_dir=tmp,
        database_url=url,
        shutdown_grace_seconds=0.5,
        risk_rules_poll_seconds=0.1,
        risk_emergency_poll_seconds=0.1,
        **extra,
    )


@asynccontextmanager
async def risk_node(
    url: str, tmp: Path, interceptors: list[Any] | None = None, issuer: Issuer | None = None, **extra: Any
) -> AsyncIterator[RiskNode]:
    """Risk with auth enforced; its client channel presents each RPC's production caller (tests.auth)."""
    async with AsyncExitStack() as stack:
        if issuer is None:
            issuer = await Issuer().start()
            stack.push_async_callback(issuer.stop)
        config = settings(url, tmp, **{"service_name": "risk", **issuer.settings(), **extra})
        app = await risk_app.build(config)
        if interceptors:
            await app.start()
            server = await create_server(config, app.registrations, interceptors=interceptors)
        else:
            server = await start_app(app, config)
        channel = acting_channel(f"127.0.0.1:{server.port}", issuer)
        try:
            yield RiskNode(app, server, channel, issuer)
        finally:
            await channel.close()
            await server.server.stop(0)
            await app.close()
            for authorizer in server.authorizers:
                await authorizer.close()


async def wait_until(condition: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll `condition` (sync or async) until true; fail the test with a clear message on timeout."""
    import asyncio
    import inspect

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
