"""Wires the risk service: database and servicer."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.platform.config import ServiceSettings
from finmesh.platform.db import create_engine, create_schema
from finmesh.platform.server import Registration
from finmesh.risk.api.servicer import RiskServicer
from finmesh.risk.store.schema import metadata
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc


@dataclass
class RiskApp:
    registrations: list[Registration]
    engine: AsyncEngine

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.engine.dispose()


async def build(settings: ServiceSettings) -> RiskApp:
    engine = create_engine(settings.database_url_for("risk"))
    await create_schema(engine, metadata)
    registration = Registration(RiskServicer(engine), pb_grpc.add_RiskServiceServicer_to_server,
                                pb.DESCRIPTOR.services_by_name["RiskService"])
    return RiskApp([registration], engine)
