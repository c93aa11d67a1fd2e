"""Wires the risk service: database, rules watch, event intake (identity's user events), outbox relays to its
consumers (notify), emergency response (freezes through payments, tier raises through identity)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.common.v1 import event_intake_pb2, event_intake_pb2_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.messaging.consumers import EventRelays, event_relays
from finmesh.platform.messaging.rabbitmq.consumer import EventConsumer
from finmesh.platform.messaging.rabbitmq.topology import Broker
from finmesh.platform.messaging.relay import RelayPolicy
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.guard import to_status
from finmesh.platform.rpc.server import Registration
from finmesh.platform.storage.db import create_engine, is_sqlite
from finmesh.platform.storage.idempotency import IdempotencyStore
from finmesh.platform.storage.migrations import prepare_schema
from finmesh.risk.api import event_intake
from finmesh.risk.api.event_intake import EventIntakeServicer
from finmesh.risk.api.servicer import RiskServicer
from finmesh.risk.clients.identity import IDENTITY_IDEMPOTENT_METHODS, IdentityClient
from finmesh.risk.clients.payments import PAYMENTS_IDEMPOTENT_METHODS, PaymentsClient
from finmesh.risk.config import RiskSettings
from finmesh.risk.store.schema import idempotency, outbox
from finmesh.risk.usecases import assessment_metrics
from finmesh.risk.usecases.assessment_writer import AssessmentWriter
from finmesh.risk.usecases.blocklist import BlockList
from finmesh.risk.usecases.emergency import EmergencyResponder, ResponsePolicy
from finmesh.risk.usecases.intake import UserEventIntake
from finmesh.risk.usecases.monitoring import Monitoring
from finmesh.risk.usecases.onboarding import Onboarding
from finmesh.risk.usecases.rules import RulesRegistry
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc

_log = get_logger("finmesh.risk")


@dataclass
class RiskApp:
    registrations: list[Registration]
    engine: AsyncEngine
    rules: RulesRegistry
    writer: AssessmentWriter
    relay: EventRelays | None = None
    responder: EmergencyResponder | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # FINMESH_EVENTS_TRANSPORT=rabbitmq: identity's user events from the broker (DeliverEvents keeps answering).
    events: EventConsumer | None = None

    async def start(self) -> None:
        assessment_metrics.start_series(self.rules.active.rules)
        self.rules.start()
        self.writer.start()
        if self.relay is not None:
            self.relay.start()
        if self.responder is not None:
            self.responder.start()
        if self.events is not None:
            self.events.start()

    async def close(self) -> None:
        if self.events is not None:
            await self.events.stop()
        if self.responder is not None:
            await self.responder.stop()
        if self.relay is not None:
            await self.relay.stop()
        await self.writer.stop()
        await self.rules.stop()
        for channel in self.channels:
            await channel.close()
        await self.engine.dispose()


async def build(settings: ServiceSettings) -> RiskApp:
    config = RiskSettings.of(settings)
    engine = create_engine(config.database_url_for("risk"), pool_size=config.db_pool_size)
    await prepare_schema(engine, "risk", migrate=config.auto_migrate)
    # Stored answers to callers' idempotency keys (a refusal is stored as the status the caller got).
    answers = IdempotencyStore(engine, idempotency, to_status)
    rules = RulesRegistry(
        engine,
        answers,
        file=Path(config.risk_rules_file) if config.risk_rules_file else None,
        poll_seconds=config.risk_rules_poll_seconds,
    )
    await rules.load()
    channels: list[grpc.aio.Channel] = []
    relay = event_relays(
        engine,
        outbox,
        "risk",
        config,
        lambda target, methods: open_channel(target, config, idempotent_methods=methods),
        RelayPolicy(metrics_sample_seconds=config.metrics_sample_seconds),
    )
    if not relay.relays:
        _log.warning("operator_alerts_disabled", why="no event consumer configured: alert events wait in the outbox")
    responder = None
    if config.payments_target:
        payments = open_channel(config.payments_target, config, idempotent_methods=PAYMENTS_IDEMPOTENT_METHODS)
        channels.append(payments)
        raise_tier = None
        if config.identity_target:
            identity = open_channel(config.identity_target, config, idempotent_methods=IDENTITY_IDEMPOTENT_METHODS)
            channels.append(identity)
            raise_tier = IdentityClient(identity).raise_tier
        else:
            _log.warning("risk_tier_updates_disabled", why="no identity target: incidents do not raise tiers")
        responder = EmergencyResponder(
            engine,
            PaymentsClient(payments).freeze,
            ResponsePolicy(
                poll_seconds=config.risk_emergency_poll_seconds, call_timeout_seconds=config.call_timeout_seconds
            ),
            raise_tier=raise_tier,
        )
    else:
        _log.warning("emergency_freeze_disabled", why="no payments target: incidents wait unfrozen")

    def on_incident() -> None:
        for worker in (relay, responder):
            if worker is not None:
                worker.wake()

    writer = AssessmentWriter(
        engine,
        lambda: rules.active.rules,
        lanes=1 if is_sqlite(engine) else config.risk_writer_lanes,
        linger_seconds=config.risk_writer_linger_ms / 1000,
    )
    servicer = RiskServicer(
        rules=rules,
        writer=writer,
        onboarding=Onboarding(answers),
        block_list=BlockList(engine, answers),
        monitoring=Monitoring(engine),
        on_incident=on_incident,
    )
    registration = Registration(
        servicer, pb_grpc.add_RiskServiceServicer_to_server, pb.DESCRIPTOR.services_by_name["RiskService"]
    )
    # Identity's user events (country of residence, tier, erasure), from its outbox relay or the broker.
    user_events = UserEventIntake(engine)
    events = None
    if config.events_transport == "rabbitmq":
        events = EventConsumer(
            Broker.from_settings(config), "risk", event_intake.BINDINGS, event_intake.handler(user_events)
        )
    intake = Registration(
        EventIntakeServicer(user_events),
        event_intake_pb2_grpc.add_EventIntakeServiceServicer_to_server,
        event_intake_pb2.DESCRIPTOR.services_by_name["EventIntakeService"],
    )
    return RiskApp([registration, intake], engine, rules, writer, relay, responder, channels, events)
