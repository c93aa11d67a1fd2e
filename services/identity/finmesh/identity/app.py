"""Wires the identity service: database, vault, servicer, outbox relay to notify."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.identity.api.servicer import IdentityServicer
from finmesh.identity.config import IdentitySettings
from finmesh.identity.store.schema import metadata, outbox
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from finmesh.identity.vault import Vault
from finmesh.platform.channels import open_channel
from finmesh.platform.db import create_engine, create_schema
from finmesh.platform.event_sink import NOTIFY_IDEMPOTENT_METHODS, NotifyEventSink
from finmesh.platform.outbox import OutboxRelay
from finmesh.platform.server import Registration


@dataclass
class IdentityApp:
    registrations: list[Registration]
    engine: AsyncEngine
    relay: OutboxRelay
    channel: grpc.aio.Channel

    async def start(self) -> None:
        self.relay.start()

    async def close(self) -> None:
        await self.relay.stop()
        await self.channel.close()
        await self.engine.dispose()


async def build(settings: IdentitySettings) -> IdentityApp:
    engine = create_engine(settings.database_url_for("identity"))
    await create_schema(engine, metadata)
    notify_channel = open_channel(settings.notify_target, settings, idempotent_methods=NOTIFY_IDEMPOTENT_METHODS)
    relay = OutboxRelay(engine, outbox, "identity", NotifyEventSink(notify_channel).deliver)
    servicer = IdentityServicer(engine, Vault(settings.master_key()), on_commit=relay.wake)
    registration = Registration(servicer, pb_grpc.add_IdentityServiceServicer_to_server,
                                pb.DESCRIPTOR.services_by_name["IdentityService"])
    return IdentityApp([registration], engine, relay, notify_channel)
