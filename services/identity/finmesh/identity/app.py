"""Wires the identity service: database, vault, signing keys, clients, servicer, outbox relays to its event consumers
(notify and risk by default: FINMESH_EVENTS_CONSUMERS)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.identity.api.jwks import JwksEndpoint
from finmesh.identity.api.servicer import IdentityServicer
from finmesh.identity.clients.notify import NOTIFY_IDEMPOTENT_METHODS, NotifyClient
from finmesh.identity.clients.registry import HttpRegistry, NoRegistry, Registry
from finmesh.identity.clients.risk import RISK_IDEMPOTENT_METHODS, RiskClient
from finmesh.identity.config import IdentitySettings
from finmesh.identity.domain.vault import Vault
from finmesh.identity.store.schema import idempotency, outbox
from finmesh.identity.store.sealed_idempotency import SealedIdempotencyStore
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.keys import KeyRing
from finmesh.identity.usecases.tokens import LocalServiceTokens
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from finmesh.platform.auth.access import Authorizer
from finmesh.platform.auth.keys import KeyCache, TokenVerifier
from finmesh.platform.auth.service_tokens import mesh_secret
from finmesh.platform.messaging.consumers import EventRelays, event_relays
from finmesh.platform.messaging.relay import RelayPolicy
from finmesh.platform.rpc.channels import open_channel
from finmesh.platform.rpc.guard import to_status
from finmesh.platform.rpc.server import Registration
from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.idempotency import IdempotencyStore
from finmesh.platform.storage.migrations import prepare_schema


@dataclass
class IdentityApp:
    registrations: list[Registration]
    engine: AsyncEngine
    relay: EventRelays
    deps: Deps
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    # The JWKS listener (None: FINMESH_JWKS_PORT=-1).
    jwks: JwksEndpoint | None = None

    async def start(self) -> None:
        self.relay.start()
        if self.jwks is not None:
            await self.jwks.start(self.deps.settings.host, self.deps.settings.jwks_port)

    def http_ports(self) -> dict[str, int]:
        """What the runner announces besides the gRPC and metrics ports."""
        return {"jwks_port": self.jwks.port if self.jwks is not None else 0}

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.stop()
        await self.relay.stop()
        await self.deps.registry.close()
        for channel in self.channels:
            await channel.close()
        await self.engine.dispose()


def _registry(settings: IdentitySettings) -> Registry:
    if not settings.identity_registry_url:
        return NoRegistry()
    return HttpRegistry(
        settings.identity_registry_url,
        settings.identity_registry_api_key.get_secret_value(),
        timeout=settings.call_timeout_seconds,
    )


async def build(settings: IdentitySettings) -> IdentityApp:
    engine = create_engine(settings.database_url_for("identity"), pool_size=settings.db_pool_size)
    await prepare_schema(engine, "identity", migrate=settings.auto_migrate)
    vault = Vault(settings.master_key())
    keys = KeyRing(
        engine,
        vault,
        max_token_ttl=max(settings.identity_access_token_ttl_seconds, settings.identity_service_token_ttl_seconds),
    )
    await keys.ensure_key()
    tokens = LocalServiceTokens(keys, settings.identity_service_token_ttl_seconds)
    notify_channel = open_channel(
        settings.notify_target, settings, idempotent_methods=NOTIFY_IDEMPOTENT_METHODS, token_source=tokens
    )
    channels = [notify_channel]
    risk = None
    if settings.risk_target:
        risk_channel = open_channel(
            settings.risk_target, settings, idempotent_methods=RISK_IDEMPOTENT_METHODS, token_source=tokens
        )
        channels.append(risk_channel)
        risk = RiskClient(risk_channel)
    relay = event_relays(
        engine,
        outbox,
        "identity",
        settings,
        lambda target, methods: open_channel(target, settings, idempotent_methods=methods, token_source=tokens),
        RelayPolicy(metrics_sample_seconds=settings.metrics_sample_seconds),
        timeout=5.0,
        known={"notify": notify_channel},
    )
    deps = Deps(
        engine=engine,
        vault=vault,
        keys=keys,
        settings=settings,
        mesh_secret=mesh_secret(settings),
        idem=IdempotencyStore(engine, idempotency, to_status),
        sealed=SealedIdempotencyStore(engine, idempotency, to_status, vault),
        notify=NotifyClient(notify_channel),
        risk=risk,
        registry=_registry(settings),
        on_commit=relay.wake,
    )
    # Identity verifies tokens from its own key table: no call to itself, and rotations seen at once.
    authorizer = Authorizer(TokenVerifier(KeyCache(keys.published, refresh_seconds=5.0)))
    registration = Registration(
        IdentityServicer(deps),
        pb_grpc.add_IdentityServiceServicer_to_server,
        pb.DESCRIPTOR.services_by_name["IdentityService"],
        authorizer=authorizer,
    )
    jwks = JwksEndpoint(deps) if settings.jwks_port >= 0 else None
    return IdentityApp([registration], engine, relay, deps, channels, jwks)
