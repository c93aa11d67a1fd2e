"""Wires the payments service: database, ledger writer, clients (risk, banks), servicer, background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments.api.common import Dependencies
from finmesh.payments.api.servicer import PaymentsServicer
from finmesh.payments.api.sweep_answers import SWEEP_ANSWERS
from finmesh.payments.clients.banks import Banks
from finmesh.payments.clients.risk import RISK_IDEMPOTENT_METHODS, RiskClient
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.store.reads import Reads
from finmesh.payments.store.schema import idempotency, outbox
from finmesh.payments.store.tiers import TableTierSource, TierSource
from finmesh.payments.usecases import metrics
from finmesh.payments.usecases.ledger_writer import LedgerWriter
from finmesh.payments.usecases.sweeper import PendingOperationSweeper
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.messaging.consumers import EventRelays, event_relays
from finmesh.platform.messaging.event_sink import NOTIFY_IDEMPOTENT_METHODS, EventSink
from finmesh.platform.messaging.relay import RelayPolicy
from finmesh.platform.observability.metrics import sample_every
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.guard import to_status
from finmesh.platform.rpc.server import Registration
from finmesh.platform.storage.db import create_engine, create_read_engine
from finmesh.platform.storage.idempotency import IdempotencyStore, count_replays_of
from finmesh.platform.storage.migrations import prepare_schema
from finmesh.platform.storage.sqlite_thread import SqliteWriteThread, write_thread_for


@dataclass
class PaymentsApp:
    settings: PaymentsSettings
    registrations: list[Registration]
    relay: EventRelays
    writer: LedgerWriter
    sweeper: PendingOperationSweeper
    engine: AsyncEngine
    reader: AsyncEngine
    banks: Banks
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    write_thread: SqliteWriteThread | None = None
    risk: RiskClient | None = None
    probes: list[asyncio.Task[None]] = field(default_factory=list)
    # The broker's publisher on FINMESH_EVENTS_TRANSPORT=rabbitmq (closed with the relays), for tests to watch.
    sink: EventSink | None = None

    async def start(self) -> None:
        await self.writer.prepare()
        self.writer.start()
        self.relay.start()
        self.sweeper.start()
        metrics.start_counters()
        count_replays_of(IDEMPOTENT_METHODS)
        # The full check reads every account: four times rarer than the gauges that read queues.
        every = self.settings.metrics_sample_seconds * 4
        self.probes.append(
            asyncio.create_task(
                sample_every(every, self.check_ledger, name="ledger_invariant"), name="payments-ledger-invariant"
            )
        )

    async def check_ledger(self) -> None:
        await metrics.check_ledger(self.reader)

    async def close(self) -> None:
        for probe in self.probes:
            probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.probes)
        await self.sweeper.stop()
        await self.writer.stop()
        await self.relay.stop()
        if self.write_thread is not None:
            await self.write_thread.close()
        if self.risk is not None:
            await self.risk.close()
        await self.banks.close()
        for channel in self.channels:
            await channel.close()
        await self.engine.dispose()
        await self.reader.dispose()


# The mutating methods: each answers a retry from its idempotency key (their replays are counted).
IDEMPOTENT_METHODS = tuple(
    method.name
    for method in pb.DESCRIPTOR.services_by_name["PaymentsService"].methods
    if "idempotency_key" in method.input_type.fields_by_name
)


async def build(settings: PaymentsSettings, tier_source: TierSource | None = None) -> PaymentsApp:
    engine = create_engine(settings.database_url_for("payments"), pool_size=settings.db_pool_size)
    await prepare_schema(engine, "payments", migrate=settings.auto_migrate)
    risk_channel = open_channel(settings.risk_target, settings, idempotent_methods=RISK_IDEMPOTENT_METHODS)
    notify_channel = open_channel(settings.notify_target, settings, idempotent_methods=NOTIFY_IDEMPOTENT_METHODS)
    # On an SQLite file the ledger writer's and the relay's transactions run on one thread of their own.
    write_thread = write_thread_for(engine, "payments-sqlite-writer")
    relay = event_relays(
        engine,
        outbox,
        "payments",
        settings,
        lambda target, methods: open_channel(target, settings, idempotent_methods=methods),
        RelayPolicy(
            lease_seconds=settings.outbox_lease_seconds, metrics_sample_seconds=settings.metrics_sample_seconds
        ),
        thread=write_thread,
        timeout=5.0,
        known={"notify": notify_channel},
    )
    writer = LedgerWriter(
        engine,
        tier_source or TableTierSource(settings.default_tier),
        to_status,
        max_batch=settings.writer_max_batch,
        on_commit=relay.wake,
        limits_utc_offset_minutes=settings.limits_utc_offset_minutes,
        test_owners=frozenset(settings.synthetic_owner_ids),
        thread=write_thread,
    )
    # FINMESH_CHANNEL_*: the banks, by the payment channel each serves.
    banks = Banks(settings.channel_urls, settings.channel_timeout_seconds, settings.channel_sandbox)
    sweeper = PendingOperationSweeper(
        engine,
        writer,
        banks,
        SWEEP_ANSWERS,
        grace_seconds=settings.channel_pending_grace_seconds,
        interval_seconds=settings.channel_sweep_interval_seconds,
        authorization_ttl_seconds=settings.authorization_ttl_seconds,
    )
    reader = create_read_engine(settings.database_url_for("payments"), pool_size=settings.db_read_pool_size)
    risk = RiskClient(risk_channel, max_in_flight=settings.risk_max_in_flight)
    deps = Dependencies(
        reads=Reads(reader),
        writer=writer,
        idempotency=IdempotencyStore(engine, idempotency, to_status),
        risk=risk,
        banks=banks,
        settings=settings,
    )
    registration = Registration(
        PaymentsServicer(deps),
        pb_grpc.add_PaymentsServiceServicer_to_server,
        pb.DESCRIPTOR.services_by_name["PaymentsService"],
    )
    return PaymentsApp(
        settings,
        [registration],
        relay,
        writer,
        sweeper,
        engine,
        reader,
        banks,
        [risk_channel, notify_channel],
        write_thread,
        risk,
        sink=relay.sinks[0] if relay.sinks else None,
    )
