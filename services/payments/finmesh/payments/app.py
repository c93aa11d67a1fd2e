"""Wires the payments service: database, clients, servicer, outbox relay."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from finmesh.payments.api.servicer import PaymentsServicer
from finmesh.payments.clients import RISK_IDEMPOTENT_METHODS, RiskClient
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.store.schema import metadata, outbox
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.channels import open_channel
from finmesh.platform.db import create_engine, create_schema
from finmesh.platform.event_sink import NOTIFY_IDEMPOTENT_METHODS, NotifyEventSink
from finmesh.platform.outbox import OutboxRelay
from finmesh.platform.server import Registration


@dataclass
class PaymentsApp:
    settings: PaymentsSettings
    registrations: list[Registration]
    relay: OutboxRelay
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    engine: object = None

    async def start(self) -> None:
        self.relay.start()

    async def close(self) -> None:
        await self.relay.stop()
        for channel in self.channels:
            await channel.close()
        await self.engine.dispose()  # type: ignore[attr-defined]


async def build(settings: PaymentsSettings) -> PaymentsApp:
    engine = create_engine(settings.database_url_for("payments"))
    await create_schema(engine, metadata)
    risk_channel = open_channel(settings.risk_target, settings, idempotent_methods=RISK_IDEMPOTENT_METHODS)
    notify_channel = open_channel(settings.notify_target, settings, idempotent_methods=NOTIFY_IDEMPOTENT_METHODS)
    relay = OutboxRelay(engine, outbox, "payments", NotifyEventSink(notify_channel).deliver)
    servicer = PaymentsServicer(engine, RiskClient(risk_channel), settings, on_commit=relay.wake)
    registration = Registration(servicer, pb_grpc.add_PaymentsServiceServicer_to_server,
                                pb.DESCRIPTOR.services_by_name["PaymentsService"])
    return PaymentsApp(settings, [registration], relay, [risk_channel, notify_channel], engine)
