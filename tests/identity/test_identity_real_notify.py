"""The one-time code through the real notify service to a (fake, real-HTTP) SMS provider, auth enforced."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc

from finmesh.fakes.registry import FakeRegistry
from finmesh.fakes.sms import FakeSmsProvider
from finmesh.identity import app as identity_app
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from finmesh.notify import app as notify_app
from finmesh.notify.config import NotifySettings
from finmesh.platform.runner import start_app
from tests.identity.harness import SERVICE_SECRET, free_port, identity_settings, key, new_person, stop_server


async def _sms_to(sms: FakeSmsProvider, phone: str) -> str:
    for _ in range(100):
        texts = [m["text"] for m in sms.messages if m["to"] == phone]
        if texts:
            return texts[-1]
        await asyncio.sleep(0.05)
    raise AssertionError("no SMS arrived")


async def test_code_reaches_the_phone_through_notify(databases, tmp_path: Path) -> None:
    """StartVerification -> notify SendNotification (identity's service token) -> SMS provider; the code
    in the text message verifies the contact."""
    identity_port = free_port()
    sms = await FakeSmsProvider().start()
    notify_settings = NotifySettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "notify",
        database_url=await databases.new("notify"),
        shutdown_grace_seconds=0.5,
        auth_mode="enforce",
        identity_target=f"127.0.0.1:{identity_port}",
        service_name="notify",
        service_secret=SERVICE_SECRET,
        sms_url=sms.url,
        sms_api_key=sms.api_key,
    )
    notify = await notify_app.build(notify_settings)
    notify_server = await start_app(notify, notify_settings)
    registry = await FakeRegistry().start()
    settings = identity_settings(
        tmp_path,
        await databases.new("identity"),
        port=identity_port,
        notify_target=f"127.0.0.1:{notify_server.port}",
        identity_registry_url=registry.url,
        identity_registry_api_key=registry.api_key,
    )
    identity = await identity_app.build(settings)
    identity_server = await start_app(identity, settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{identity_port}") as channel:
            stub = pb_grpc.IdentityServiceStub(channel)
            person = new_person()
            user_id = (
                await stub.RegisterUser(
                    pb.RegisterUserRequest(
                        idempotency_key=key(),
                        kind=pb.USER_KIND_PERSONAL,
                        legal_name=person.legal_name,
                        id_number=person.id_number,
                        phone=person.phone,
                        email=person.email,
                        password="correct horse battery",
                        locale="en",
                    )
                )
            ).user.user_id
            started = await stub.StartVerification(
                pb.StartVerificationRequest(idempotency_key=key(), user_id=user_id, channel=pb.VERIFICATION_CHANNEL_SMS)
            )
            text = await _sms_to(sms, person.phone)
            assert "verification code" in text
            code = re.search(r"\b(\d{6})\b", text).group(1)
            reply = await stub.ConfirmVerification(
                pb.ConfirmVerificationRequest(idempotency_key=key(), verification_id=started.verification_id, code=code)
            )
            assert reply.user.verifications.contact == pb.VERIFICATION_STATE_PASSED
    finally:
        await stop_server(identity_server)
        await identity.close()
        await stop_server(notify_server)
        await notify.close()
        await registry.stop()
        await sms.stop()
