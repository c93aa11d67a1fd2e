"""Starts services inside the test process on ephemeral ports, each with its own database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from finmesh.identity import app as identity_app
from finmesh.identity.config import IdentitySettings
from finmesh.notify import app as notify_app
from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.server import RunningServer
from finmesh.platform.runner import start_app
from finmesh.risk import app as risk_app
from tests.auth import Book, Issuer
from tests.auth import channel as acting_channel


@dataclass
class Service:
    name: str
    app: Any
    server: RunningServer
    database_url: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@dataclass
class InProcessMesh:
    issuer: Issuer
    services: dict[str, Service] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # Account owners and payment parties the mesh's client channels learned (tests.auth.ActingAs).
    book: Book = field(default_factory=Book)

    def channel(self, name: str) -> grpc.aio.Channel:
        """A client channel whose calls carry the token of their production caller (tests.auth)."""
        channel = acting_channel(self.services[name].target, self.issuer, self.book)
        self.channels.append(channel)
        return channel

    def bare_channel(self, name: str) -> grpc.aio.Channel:
        """A client channel that adds no token: the test passes its own metadata."""
        channel = grpc.aio.insecure_channel(self.services[name].target)
        self.channels.append(channel)
        return channel

    async def stop(self, name: str) -> None:
        service = self.services[name]
        await service.server.server.stop(0)
        await service.app.close()
        for authorizer in service.server.authorizers:
            await authorizer.close()


def _common(tmp: Path, issuer: Issuer, name: str, **extra: Any) -> dict[str, Any]:
    """Auth enforced: tokens verified with the issuer's keys, service tokens from it for `name`."""
    return {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": tmp,
        "shutdown_grace_seconds": 1.0,
        "service_name": name,
        **issuer.settings(),
        **extra,
    }


def _with(common: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {**(common or {}), **extra}


@asynccontextmanager
async def running_mesh(
    databases: Any,
    tmp: Path,
    names: tuple[str, ...] = ("notify", "risk", "payments"),
    payments_extra: dict[str, Any] | None = None,
    notify_port: int = 0,
    issuer: Issuer | None = None,
    common: dict[str, Any] | None = None,
) -> AsyncIterator[InProcessMesh]:
    """Start `names` in dependency order; payments and identity get the others' targets; every service gets
    `common`'s settings besides (the events transport, say).

    Auth is enforced everywhere; `issuer` (one is started when not given) signs the tokens
    and stands in for identity's key and service-token endpoints.
    """
    own_issuer = issuer is None
    mesh = InProcessMesh(issuer or await Issuer().start())
    try:
        for name in names:
            url = await databases.new(name)
            targets = {f"{n}_target": s.target for n, s in mesh.services.items()}
            if name == "notify":
                settings: ServiceSettings = ServiceSettings(
                    **_common(tmp, mesh.issuer, name, **_with(common, database_url=url, port=notify_port))
                )
                app = await notify_app.build(settings)
            elif name == "risk":
                settings = ServiceSettings(**_common(tmp, mesh.issuer, name, **_with(common, database_url=url)))
                app = await risk_app.build(settings)
            elif name == "payments":
                targets.setdefault("notify_target", f"127.0.0.1:{notify_port or 1}")
                extra = _with(common, database_url=url, **targets, **(payments_extra or {}))
                settings = PaymentsSettings(**_common(tmp, mesh.issuer, name, **extra))
                app = await payments_app.build(settings)
            else:
                targets.setdefault("notify_target", f"127.0.0.1:{notify_port or 1}")
                extra = _with(common, database_url=url, **targets)
                settings = IdentitySettings(**_common(tmp, mesh.issuer, name, **extra))
                app = await identity_app.build(settings)
            server = await start_app(app, settings)
            mesh.services[name] = Service(name, app, server, url)
        yield mesh
    finally:
        for channel in mesh.channels:
            await channel.close()
        for service in reversed(list(mesh.services.values())):
            await service.server.server.stop(0)
            await service.app.close()
            for authorizer in service.server.authorizers:
                await authorizer.close()
        if own_issuer:
            await mesh.issuer.stop()
