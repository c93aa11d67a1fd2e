"""Identity under test: a real identity server with enforcing auth, the fake registry, and small
recording notify and risk servers (real gRPC servers behind the platform's enforcing guard)."""

from __future__ import annotations

import itertools
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from finmesh.fakes.registry import FakeRegistry
from finmesh.identity import app as identity_app
from finmesh.identity.config import IdentitySettings
from finmesh.identity.domain.claims import Subject, user_claims
from finmesh.identity.domain.id_number import check_char
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from finmesh.notify import app as notify_app
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.platform.auth.context import current_principal
from finmesh.platform.config import ServiceSettings
from finmesh.platform.rpc.server import Registration, RunningServer, create_server
from finmesh.platform.runner import start_app
from finmesh.risk import app as risk_app
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from finmesh.risk.v1 import risk_service_pb2_grpc as risk_grpc

MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes, tests only
SERVICE_SECRET = "test-service-secret"
PASSWORD = "correct horse battery"
_counter = itertools.count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def id_number(birth: date, region: str = "110105", seq: str | None = None) -> str:
    """A synthetic identity number with the right GB 11643 check character."""
    first17 = f"{region}{birth:%Y%m%d}{seq or f'{random.randrange(1000):03d}'}"
    return first17 + check_char(first17)


@dataclass(frozen=True)
class Person:
    legal_name: str
    id_number: str
    phone: str
    email: str


def new_person(birth: date | None = None, name: str = "测试用户") -> Person:
    """A person no other new_person() in this process shares identity number, phone or e-mail with.

    The identity number's sequence comes from a counter, not chance: with a random 3-digit
    sequence two people of one birth date collided about once in a thousand pairs, and a
    test that registered both failed with DUPLICATE_IDENTITY.
    """
    n = next(_counter)
    born = birth or date(1990, 5, 17) + timedelta(days=n // 1000)
    tag = uuid.uuid4().hex[:8]
    return Person(
        name,
        id_number(born, seq=f"{n % 1000:03d}"),
        f"+86139{n % 10**4:04d}{random.randrange(10**4):04d}",
        f"u{n}.{tag}@example.com",
    )


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def key() -> str:
    return uuid.uuid4().hex


def _details(error: grpc.aio.AioRpcError, kind: Any) -> list[Any]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found = []
    for detail in status.details if status else []:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Field -> description of a refusal's BadRequest field violations."""
    return {
        v.field: v.description for bad in _details(error, error_details_pb2.BadRequest) for v in bad.field_violations
    }


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """Seconds of a refusal's google.rpc.RetryInfo, or None when it carries none."""
    infos = _details(error, error_details_pb2.RetryInfo)
    return infos[0].retry_delay.ToTimedelta().total_seconds() if infos else None


class RecordingNotify(notify_grpc.NotifyServiceServicer):
    """Stands in for notify: records what identity asks it to send, and who asked."""

    def __init__(self) -> None:
        self.sent: list[notify_pb.SendNotificationRequest] = []
        self.callers: list[str] = []
        self.events: list[str] = []

    async def SendNotification(self, request: Any, context: Any) -> Any:
        principal = current_principal()
        self.callers.append(principal.subject if principal else "")
        self.sent.append(request)
        return notify_pb.SendNotificationResponse()

    async def DeliverEvent(self, request: Any, context: Any) -> Any:
        self.events.append(request.event.event_type)
        return notify_pb.DeliverEventResponse()

    def last_code_to(self, address: str) -> str:
        return [r for r in self.sent if r.address == address][-1].params["code"]


class RecordingRisk(risk_grpc.RiskServiceServicer):
    """Stands in for risk's onboarding assessment: answers `tier` and records the requests."""

    def __init__(self, tier: int = risk_pb.RISK_TIER_LOW) -> None:
        self.tier = tier
        self.requests: list[risk_pb.AssessOnboardingRequest] = []

    async def AssessOnboarding(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return risk_pb.AssessOnboardingResponse(tier=self.tier, score=10)


@dataclass
class IdentityEnv:
    app: Any
    server: RunningServer
    channel: grpc.aio.Channel
    stub: pb_grpc.IdentityServiceStub
    notify: RecordingNotify
    risk: RecordingRisk
    registry: FakeRegistry
    settings: IdentitySettings
    database_url: str
    others: list[RunningServer] = field(default_factory=list)
    admin_token: str = ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def mint(
        self,
        roles: list[str],
        *,
        sub: str | None = None,
        verified: bool = True,
        tier: str = "LOW",
        ttl: int = 300,
        iat_offset: int = 0,
    ) -> str:
        """An access token signed by identity's active key, as CompleteLogin would issue it."""
        subject = Subject(sub or str(uuid.uuid4()), tuple(r.upper() for r in roles), tier, verified)
        return await self.app.deps.keys.sign(user_claims(subject, int(time.time()) + iat_offset, ttl))

    async def register(self, person: Person, kind: int = pb.USER_KIND_PERSONAL, password: str = PASSWORD) -> str:
        reply = await self.stub.RegisterUser(
            pb.RegisterUserRequest(
                idempotency_key=key(),
                kind=kind,
                legal_name=person.legal_name,
                id_number=person.id_number,
                phone=person.phone,
                email=person.email,
                password=password,
                locale="zh-CN",
            )
        )
        return reply.user.user_id

    async def verify_contact(self, user_id: str, person: Person) -> pb.User:
        started = await self.stub.StartVerification(
            pb.StartVerificationRequest(idempotency_key=key(), user_id=user_id, channel=pb.VERIFICATION_CHANNEL_SMS)
        )
        reply = await self.stub.ConfirmVerification(
            pb.ConfirmVerificationRequest(
                idempotency_key=key(),
                verification_id=started.verification_id,
                code=self.notify.last_code_to(person.phone),
            )
        )
        return reply.user

    async def onboard(self, person: Person, kind: int = pb.USER_KIND_PERSONAL) -> str:
        """Register and pass all three verification steps."""
        user_id = await self.register(person, kind)
        await self.verify_contact(user_id, person)
        await self.stub.CheckRealName(pb.CheckRealNameRequest(idempotency_key=key(), user_id=user_id))
        return user_id

    async def login(self, person: Person, password: str = PASSWORD) -> pb.TokenPair:
        challenge = await self.stub.Login(pb.LoginRequest(idempotency_key=key(), login=person.phone, password=password))
        reply = await self.stub.CompleteLogin(
            pb.CompleteLoginRequest(
                idempotency_key=key(), challenge_id=challenge.challenge_id, code=self.notify.last_code_to(person.phone)
            )
        )
        return reply.tokens


def identity_settings(tmp: Path, database_url: str, **extra: Any) -> IdentitySettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": tmp,
        "database_url": database_url,
        "shutdown_grace_seconds": 0.5,
        "auth_mode": "enforce",
        "identity_master_key": MASTER_KEY,
        "service_secret": SERVICE_SECRET,
    }
    return IdentitySettings(**{**values, **extra})


async def serve_recorder(servicer: Any, add: Any, descriptor: Any, identity_target: str) -> RunningServer:
    """A stand-in service behind the platform's enforcing guard, verifying tokens from identity's keys."""
    settings = ServiceSettings(
        host="127.0.0.1", port=0, auth_mode="enforce", identity_target=identity_target, service_secret=SERVICE_SECRET
    )
    return await create_server(settings, [Registration(servicer, add, descriptor)])


async def stop_server(server: RunningServer) -> None:
    await server.server.stop(0)
    for authorizer in server.authorizers:
        await authorizer.close()


@asynccontextmanager
async def identity_env(databases: Any, tmp: Path, **extra: Any) -> AsyncIterator[IdentityEnv]:
    """Identity (auth enforced) with recording notify and risk servers and the fake registry."""
    async with AsyncExitStack() as stack:
        identity_port = free_port()
        identity_target = f"127.0.0.1:{identity_port}"
        recorder, risk = RecordingNotify(), RecordingRisk()
        notify_server = await serve_recorder(
            recorder,
            notify_grpc.add_NotifyServiceServicer_to_server,
            notify_pb.DESCRIPTOR.services_by_name["NotifyService"],
            identity_target,
        )
        stack.push_async_callback(stop_server, notify_server)
        risk_server = await serve_recorder(
            risk,
            risk_grpc.add_RiskServiceServicer_to_server,
            risk_pb.DESCRIPTOR.services_by_name["RiskService"],
            identity_target,
        )
        stack.push_async_callback(stop_server, risk_server)
        registry = stack.enter_context(FakeRegistry())
        url = await databases.new("identity")
        settings = identity_settings(
            tmp,
            url,
            port=identity_port,
            notify_target=f"127.0.0.1:{notify_server.port}",
            risk_target=f"127.0.0.1:{risk_server.port}",
            identity_registry_url=registry.url,
            identity_registry_api_key=registry.api_key,
            **extra,
        )
        app = await identity_app.build(settings)
        stack.push_async_callback(app.close)
        server = await start_app(app, settings)
        stack.push_async_callback(stop_server, server)
        channel = grpc.aio.insecure_channel(identity_target)
        stack.push_async_callback(channel.close)
        yield IdentityEnv(
            app,
            server,
            channel,
            pb_grpc.IdentityServiceStub(channel),
            recorder,
            risk,
            registry,
            settings,
            url,
            [notify_server, risk_server],
        )


async def start_enforcing_services(
    stack: AsyncExitStack, databases: Any, tmp: Path, identity_target: str
) -> dict[str, str]:
    """The real notify, risk and payments in-process, enforcing auth, each with its own database and its
    own service credential (derived from the mesh secret). Returns their targets."""
    targets: dict[str, str] = {}
    for name in ("notify", "risk", "payments"):
        common = {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": tmp / name,
            "shutdown_grace_seconds": 0.5,
            "database_url": await databases.new(name),
            "auth_mode": "enforce",
            "service_name": name,
            "service_secret": SERVICE_SECRET,
            "identity_target": identity_target,
            **{f"{n}_target": t for n, t in targets.items()},
        }
        if name == "payments":
            settings: ServiceSettings = PaymentsSettings(**common)
            app = await payments_app.build(settings)
        else:
            settings = ServiceSettings(**common)
            app = await (notify_app if name == "notify" else risk_app).build(settings)
        stack.push_async_callback(app.close)
        server = await start_app(app, settings)
        stack.push_async_callback(stop_server, server)
        targets[name] = f"127.0.0.1:{server.port}"
    return targets
