"""Signing keys: published over gRPC, rotated with overlap, private halves sealed and destroyed on retirement."""

from __future__ import annotations

import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from finmesh.identity.store.schema import signing_keys
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.notify.v1 import notify_service_pb2_grpc as notify_grpc
from finmesh.platform.auth.tokens import parse
from finmesh.platform.rpc.guard import reason_of
from finmesh.platform.storage.db import create_engine
from tests.identity.harness import IdentityEnv, key, md


async def _send_as(env: IdentityEnv, token: str) -> None:
    """A call to the notify stand-in, which verifies tokens from identity's published keys."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{env.others[0].port}") as channel:
        await notify_grpc.NotifyServiceStub(channel).SendNotification(
            notify_pb.SendNotificationRequest(), metadata=md(token)
        )


async def test_rotation_keeps_old_tokens_valid_until_they_expire(env: IdentityEnv) -> None:
    """After RotateSigningKey new tokens carry the new kid, tokens of the old key still pass at other
    services, and GetPublicKeys lists the old key with a not_after past its tokens' expiry."""
    before = await env.stub.GetPublicKeys(pb.GetPublicKeysRequest())
    old_token = await env.mint(["service"])
    await _send_as(env, old_token)  # the stand-in has cached the old key set
    admin = await env.mint(["admin"])
    request = pb.RotateSigningKeyRequest(idempotency_key=key())
    rotated = await env.stub.RotateSigningKey(request, metadata=md(admin))
    assert (await env.stub.RotateSigningKey(request, metadata=md(admin))) == rotated  # replayed, not rotated twice
    assert rotated.active_key_id != before.active_key_id
    after = await env.stub.GetPublicKeys(pb.GetPublicKeysRequest())
    assert after.active_key_id == rotated.active_key_id
    published = {k.key_id: k for k in after.keys}
    old = published[before.active_key_id]
    ttl = env.settings.identity_access_token_ttl_seconds
    assert old.not_after.seconds >= time.time() + ttl and not published[rotated.active_key_id].HasField("not_after")
    assert all(k.algorithm == "EdDSA" and len(k.public_key) == 32 for k in after.keys)
    new_token = await env.mint(["service"])
    assert parse(new_token).kid == rotated.active_key_id
    # The stand-in meets an unknown kid, fetches the keys again, and accepts both tokens.
    await _send_as(env, new_token)
    await _send_as(env, old_token)
    # Each published key really verifies its tokens.
    parsed = parse(old_token)
    Ed25519PublicKey.from_public_bytes(old.public_key).verify(parsed.signature, parsed.signing_input)


async def test_private_keys_are_sealed_and_retired_ones_destroyed(env: IdentityEnv) -> None:
    """The active private key is stored encrypted (not its raw 32 bytes); a retired key keeps no private half."""
    admin = await env.mint(["admin"])
    await env.stub.RotateSigningKey(pb.RotateSigningKeyRequest(idempotency_key=key()), metadata=md(admin))
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(signing_keys))).all()
    finally:
        await engine.dispose()
    active = [r for r in rows if r.retired_at is None]
    retired = [r for r in rows if r.retired_at is not None]
    assert len(active) == 1 and len(retired) == 1
    assert retired[0].private_key_enc is None and retired[0].not_after is not None
    _, signer = await env.app.deps.keys._active()
    raw = signer.private_bytes_raw()
    assert raw not in active[0].private_key_enc and len(active[0].private_key_enc) == 12 + 32 + 16


async def test_only_admins_rotate(env: IdentityEnv) -> None:
    """RotateSigningKey needs identity.keys.rotate: a risk officer is PERMISSION_DENIED, no token UNAUTHENTICATED."""
    officer = await env.mint(["risk_officer"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.stub.RotateSigningKey(pb.RotateSigningKeyRequest(idempotency_key=key()), metadata=md(officer))
    assert (refused.value.code(), reason_of(refused.value)) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await env.stub.RotateSigningKey(pb.RotateSigningKeyRequest(idempotency_key=key()))
    assert (refused.value.code(), reason_of(refused.value)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
