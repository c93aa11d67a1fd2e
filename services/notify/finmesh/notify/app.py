"""Wires the notify service: database and servicer."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.api.servicer import NotifyServicer
from finmesh.notify.store.schema import metadata
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2_grpc as pb_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.db import create_engine, create_schema
from finmesh.platform.server import Registration


@dataclass
class NotifyApp:
    registrations: list[Registration]
    engine: AsyncEngine

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.engine.dispose()


async def build(settings: ServiceSettings) -> NotifyApp:
    engine = create_engine(settings.database_url_for("notify"))
    await create_schema(engine, metadata)
    registration = Registration(NotifyServicer(engine), pb_grpc.add_NotifyServiceServicer_to_server,
                                pb.DESCRIPTOR.services_by_name["NotifyService"])
    return NotifyApp([registration], engine)
