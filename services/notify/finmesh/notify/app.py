"""Wires the notify service: database, sealing, senders, use cases, send worker, complaint SLA sweeper."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.notify.api import events_consumer
from finmesh.notify.api.servicer import NotifyServicer
from finmesh.notify.clients.senders import Sender, Unconfigured
from finmesh.notify.clients.senders.email import SmtpSender
from finmesh.notify.clients.senders.sms import HttpSmsSender
from finmesh.notify.clients.senders.webhook import WebhookSender
from finmesh.notify.config import NotifySettings, notify_settings
from finmesh.notify.store.schema import idempotency
from finmesh.notify.store.sealing import Sealer
from finmesh.notify.usecases.backlog import Backlog
from finmesh.notify.usecases.clock import Clock, SystemClock
from finmesh.notify.usecases.complaints import Complaints
from finmesh.notify.usecases.compose import Composer
from finmesh.notify.usecases.consents import Consents
from finmesh.notify.usecases.dead_letters import DeadLetters
from finmesh.notify.usecases.deps import Deps
from finmesh.notify.usecases.intake import EventIntake
from finmesh.notify.usecases.notifications import Notifications
from finmesh.notify.usecases.sla import ComplaintSla
from finmesh.notify.usecases.webhooks import Webhooks
from finmesh.notify.usecases.worker import DeliveryWorker
from finmesh.notify.v1 import notify_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2_grpc as pb_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.messaging.rabbitmq.consumer import EventConsumer
from finmesh.platform.messaging.rabbitmq.topology import Broker
from finmesh.platform.observability.metrics import sample_every
from finmesh.platform.rpc.guard import to_status
from finmesh.platform.rpc.server import Registration
from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.idempotency import IdempotencyStore
from finmesh.platform.storage.migrations import prepare_schema


@dataclass
class NotifyApp:
    registrations: list[Registration]
    engine: AsyncEngine
    settings: NotifySettings
    worker: DeliveryWorker
    sla: ComplaintSla
    senders: dict[str, Sender]
    backlog: Backlog
    # FINMESH_EVENTS_TRANSPORT=rabbitmq: events from the broker (DeliverEvents keeps answering as well).
    events: EventConsumer | None = None
    _sampler: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        self.worker.start()
        if self.events is not None:
            self.events.start()
        self.sla.start()
        if self.settings.metrics_enabled:
            self._sampler = asyncio.create_task(
                sample_every(self.settings.metrics_sample_seconds, self.backlog.sample, name="notify-backlog"),
                name="notify-backlog-gauges",
            )

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None
        if self.events is not None:
            await self.events.stop()
        await self.sla.stop()
        await self.worker.stop()
        for sender in self.senders.values():
            await sender.close()
        await self.engine.dispose()


def build_senders(s: NotifySettings) -> dict[str, Sender]:
    """One sender per external channel, from settings; a channel without an endpoint dead-letters its messages."""
    return {
        "EMAIL": SmtpSender(
            s.smtp_host,
            s.smtp_port,
            s.smtp_sender,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value(),
            starttls=s.smtp_starttls,
            timeout=s.smtp_timeout_seconds,
        )
        if s.smtp_host
        else Unconfigured("EMAIL"),
        "SMS": HttpSmsSender(s.sms_url, s.sms_api_key.get_secret_value(), s.sms_timeout_seconds)
        if s.sms_url
        else Unconfigured("SMS"),
        "WEBHOOK": WebhookSender(s.webhook_timeout_seconds),
    }


async def build(
    settings: ServiceSettings, *, clock: Clock | None = None, senders: dict[str, Sender] | None = None
) -> NotifyApp:
    s = notify_settings(settings)
    clock = clock or SystemClock()
    engine = create_engine(s.database_url_for("notify"), pool_size=s.db_pool_size)
    await prepare_schema(engine, "notify", migrate=s.auto_migrate)
    composer = Composer(Sealer(s.master_key()))
    senders = senders or build_senders(s)
    worker = DeliveryWorker(engine, composer, senders, s, clock)
    deps = Deps(engine, IdempotencyStore(engine, idempotency, to_status), composer, s, clock, worker.wake)
    sla = ComplaintSla(deps)
    intake = EventIntake(deps)
    events = None
    if s.events_transport == "rabbitmq":
        events = EventConsumer(
            Broker.from_settings(s), "notify", events_consumer.BINDINGS, events_consumer.handler(intake)
        )
    servicer = NotifyServicer(
        intake=intake,
        notifications=Notifications(deps),
        consents=Consents(deps),
        webhooks=Webhooks(deps),
        dead_letters=DeadLetters(deps),
        complaints=Complaints(deps, sla),
        webhook_allow_loopback_http=s.webhook_allow_loopback_http,
    )
    registration = Registration(
        servicer, pb_grpc.add_NotifyServiceServicer_to_server, pb.DESCRIPTOR.services_by_name["NotifyService"]
    )
    return NotifyApp([registration], engine, s, worker, sla, senders, Backlog(engine, clock, senders), events)
