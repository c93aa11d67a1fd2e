"""Tokens are checked locally: with the identity process stopped, payments (enforcing) still accepts a
valid token and refuses expired, tampered, forged and missing ones."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from finmesh.cli.mesh import is_serving
from finmesh.fakes.registry import FakeRegistry
from finmesh.identity.domain.claims import Subject, user_claims
from finmesh.identity.domain.vault import Vault
from finmesh.identity.usecases.keys import KeyRing
from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.payments import app as payments_app
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.v1 import payments_service_pb2 as pay_pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc
from finmesh.platform.auth.tokens import sign
from finmesh.platform.rpc.guard import reason_of
from finmesh.platform.runner import start_app
from finmesh.platform.storage.db import create_engine
from tests.identity.harness import (
    MASTER_KEY,
    PASSWORD,
    SERVICE_SECRET,
    RecordingNotify,
    free_port,
    key,
    md,
    new_person,
    serve_recorder,
    stop_server,
)

pytestmark = pytest.mark.timeout(120)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper_claims(token: str, **changes: object) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return ".".join([head, _b64(json.dumps(claims, separators=(",", ":")).encode()), sig])


def _identity_process(
    tmp: Path, port: int, database_url: str, notify_target: str, registry: FakeRegistry
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FINMESH_PORT": str(port),
        "FINMESH_DATABASE_URL": database_url,
        "FINMESH_DATA_DIR": str(tmp / "identity"),
        "FINMESH_AUTH_MODE": "enforce",
        "FINMESH_IDENTITY_MASTER_KEY": MASTER_KEY,
        "FINMESH_SERVICE_SECRET": SERVICE_SECRET,
        "FINMESH_NOTIFY_TARGET": notify_target,
        "FINMESH_IDENTITY_REGISTRY_URL": registry.url,
        "FINMESH_IDENTITY_REGISTRY_API_KEY": registry.api_key,
        "FINMESH_TRACING_ENABLED": "false",
        "FINMESH_SHUTDOWN_GRACE_SECONDS": "1",
    }
    log = (tmp / "identity.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "finmesh.identity.main"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )


async def _wait_serving(target: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(is_serving, target):
        assert process.poll() is None, "identity exited during start"
        assert time.monotonic() < deadline, "identity did not start"
        await asyncio.sleep(0.1)


async def _expired_token(database_url: str, user_id: str) -> str:
    """A token identity signed earlier with its real key, expired by now (issued 20 minutes ago)."""
    engine = create_engine(database_url)
    try:
        ring = KeyRing(engine, Vault(base64.b64decode(MASTER_KEY)), max_token_ttl=600)
        subject = Subject(user_id, ("PERSONAL",), "LOW", True)
        return await ring.sign(user_claims(subject, int(time.time()) - 1200, 600))
    finally:
        await engine.dispose()


async def test_payments_verifies_tokens_while_identity_is_down(databases, tmp_path: Path) -> None:
    identity_port = free_port()
    identity_target = f"127.0.0.1:{identity_port}"
    recorder = RecordingNotify()
    notify_server = await serve_recorder(
        recorder,
        notify_grpc.add_NotifyServiceServicer_to_server,
        notify_pb.DESCRIPTOR.services_by_name["NotifyService"],
        identity_target,
    )
    identity_url = await databases.new("identity")
    settings = PaymentsSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "payments",
        database_url=await databases.new("payments"),
        shutdown_grace_seconds=0.5,
        auth_mode="enforce",
        identity_target=identity_target,
        service_name="payments",
        service_secret=SERVICE_SECRET,
        risk_target="127.0.0.1:1",
        notify_target=f"127.0.0.1:{notify_server.port}",
    )
    payments = await payments_app.build(settings)
    payments_server = await start_app(payments, settings)
    person = new_person()
    with FakeRegistry() as registry:
        process = _identity_process(tmp_path, identity_port, identity_url, f"127.0.0.1:{notify_server.port}", registry)
        try:
            await _wait_serving(identity_target, process)
            async with grpc.aio.insecure_channel(identity_target) as channel:
                identity = id_grpc.IdentityServiceStub(channel)
                user_id = (
                    await identity.RegisterUser(
                        id_pb.RegisterUserRequest(
                            idempotency_key=key(),
                            kind=id_pb.USER_KIND_PERSONAL,
                            legal_name=person.legal_name,
                            id_number=person.id_number,
                            phone=person.phone,
                            email=person.email,
                            password=PASSWORD,
                            locale="en",
                        )
                    )
                ).user.user_id
                challenge = await identity.Login(
                    id_pb.LoginRequest(idempotency_key=key(), login=person.phone, password=PASSWORD)
                )
                tokens = (
                    await identity.CompleteLogin(
                        id_pb.CompleteLoginRequest(
                            idempotency_key=key(),
                            challenge_id=challenge.challenge_id,
                            code=recorder.last_code_to(person.phone),
                        )
                    )
                ).tokens
            payments_channel = grpc.aio.insecure_channel(f"127.0.0.1:{payments_server.port}")
            stub = pay_grpc.PaymentsServiceStub(payments_channel)
            token = tokens.access_token
            opened = await stub.OpenAccount(
                pay_pb.OpenAccountRequest(
                    idempotency_key=key(),
                    owner_id=user_id,
                    kind=pay_pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                    currency_code="CNY",
                ),
                metadata=md(token),
            )
            expired = await _expired_token(identity_url, user_id)
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(process.wait, 20)
        assert exit_code == 0
    try:
        assert not await asyncio.to_thread(is_serving, identity_target)
        # Identity is gone: the valid token still works, from payments' cached keys.
        listed = await stub.ListAccounts(pay_pb.ListAccountsRequest(owner_id=user_id), metadata=md(token))
        assert [a.account_id for a in listed.accounts] == [opened.account.account_id]
        got = await stub.GetAccount(pay_pb.GetAccountRequest(account_id=opened.account.account_id), metadata=md(token))
        assert got.account.owner_id == user_id
        forger = Ed25519PrivateKey.generate()
        head, body, sig = token.split(".")
        refusals = {
            "expired": (expired, "TOKEN_EXPIRED"),
            "claims changed (admin)": (_tamper_claims(token, roles=["admin"]), "TOKEN_INVALID"),
            "claims changed (exp)": (_tamper_claims(token, exp=int(time.time()) + 86400), "TOKEN_INVALID"),
            "signature changed": (".".join([head, body, ("A" if sig[0] != "A" else "B") + sig[1:]]), "TOKEN_INVALID"),
            "alg none": (".".join([_b64(b'{"alg":"none","kid":"x"}'), body, ""]), "TOKEN_INVALID"),
            "forged key": (
                sign(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))), forger, "ed25519-forged"),
                "TOKEN_INVALID",
            ),
            "garbage": ("not-a-token", "TOKEN_INVALID"),
        }
        for case, (bad, reason) in refusals.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListAccounts(pay_pb.ListAccountsRequest(owner_id=user_id), metadata=md(bad))
            assert (refused.value.code(), reason_of(refused.value)) == (grpc.StatusCode.UNAUTHENTICATED, reason), case
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListAccounts(pay_pb.ListAccountsRequest(owner_id=user_id))
        assert reason_of(refused.value) == "TOKEN_MISSING"
        await payments_channel.close()
    finally:
        await stop_server(payments_server)
        await payments.close()
        await stop_server(notify_server)
    # The identity process logged no personal data, code or token.
    log = (tmp_path / "identity.log").read_text()
    assert "user_registered" in log and "login_completed" in log
    # (The code as a JSON value: six bare digits could occur inside a timestamp.)
    secrets = [
        person.id_number,
        person.phone,
        person.email,
        person.phone[3:],
        f'"{recorder.last_code_to(person.phone)}"',
        tokens.access_token,
        tokens.refresh_token,
    ]
    assert not [s for s in secrets if s in log]
