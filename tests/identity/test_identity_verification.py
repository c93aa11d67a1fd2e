"""The three onboarding steps: identity number (at registration), a one-time code through notify,
the real-name registry check; then risk's onboarding tier."""

from __future__ import annotations

import time

import grpc
import pytest
from sqlalchemy import select

from finmesh.identity.store.schema import challenges
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.notify.v1 import notify_service_pb2 as notify_pb
from finmesh.platform.rpc.guard import field_violations_of, reason_of
from finmesh.platform.storage.db import create_engine
from finmesh.risk.v1 import risk_service_pb2 as risk_pb
from tests.identity.harness import IdentityEnv, key, new_person


async def _start(env: IdentityEnv, user_id: str, channel: int = pb.VERIFICATION_CHANNEL_SMS) -> str:
    reply = await env.stub.StartVerification(
        pb.StartVerificationRequest(idempotency_key=key(), user_id=user_id, channel=channel)
    )
    return reply.verification_id


async def _confirm(env: IdentityEnv, verification_id: str, code: str) -> pb.User:
    reply = await env.stub.ConfirmVerification(
        pb.ConfirmVerificationRequest(idempotency_key=key(), verification_id=verification_id, code=code)
    )
    return reply.user


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_code_goes_through_notify_as_a_security_message(env: IdentityEnv) -> None:
    """StartVerification calls notify's SendNotification with identity's service token: SECURITY,
    template verification_code, the address and the code; the e-mail channel goes to the e-mail."""
    person = new_person()
    user_id = await env.register(person)
    await _start(env, user_id)
    sms = env.notify.sent[-1]
    assert (sms.channel, sms.category, sms.template) == (
        notify_pb.CHANNEL_SMS,
        notify_pb.CATEGORY_SECURITY,
        "verification_code",
    )
    assert sms.address == person.phone and sms.user_id == user_id and sms.locale == "zh-CN"
    assert len(sms.params["code"]) == 6 and sms.params["code"].isdigit() and sms.params["minutes"] == "5"
    assert env.notify.callers[-1] == "service:identity"
    await _start(env, user_id, pb.VERIFICATION_CHANNEL_EMAIL)
    assert (env.notify.sent[-1].channel, env.notify.sent[-1].address) == (notify_pb.CHANNEL_EMAIL, person.email)


async def test_only_all_three_steps_let_a_user_transact(env: IdentityEnv) -> None:
    """Identity number passes at registration; contact and real name follow; then may_transact and a tier,
    which the reply of the last step already shows."""
    person = new_person()
    user_id = await env.register(person)
    user = await env.verify_contact(user_id, person)
    assert user.verifications.contact == pb.VERIFICATION_STATE_PASSED and not user.may_transact
    assert not env.risk.requests
    request = pb.CheckRealNameRequest(idempotency_key=key(), user_id=user_id)
    reply = await env.stub.CheckRealName(request)
    assert reply.user.verifications.real_name == pb.VERIFICATION_STATE_PASSED and reply.user.may_transact
    # The reply carries the tier the user got, as the token issued next will; so does its replay.
    assert reply.user.risk_tier == pb.RISK_TIER_LOW
    assert (await env.stub.CheckRealName(request)).user.risk_tier == pb.RISK_TIER_LOW
    # Risk assessed the newly verified user once, and the tier it answered is the user's.
    assert [(r.user_id, r.user_kind) for r in env.risk.requests] == [(user_id, "personal")]
    assert env.risk.requests[0].age_years >= 18
    token = await env.mint(["risk_officer"])
    got = await env.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=(("authorization", f"Bearer {token}"),))
    assert got.user.risk_tier == pb.RISK_TIER_LOW


async def test_contact_as_the_last_step_also_answers_the_tier(env: IdentityEnv) -> None:
    """Real name first, contact last: ConfirmVerification's reply carries the onboarding tier."""
    person = new_person()
    user_id = await env.register(person)
    first = await env.stub.CheckRealName(pb.CheckRealNameRequest(idempotency_key=key(), user_id=user_id))
    assert not first.user.may_transact and first.user.risk_tier == pb.RISK_TIER_UNSPECIFIED
    env.risk.tier = risk_pb.RISK_TIER_MEDIUM
    user = await env.verify_contact(user_id, person)
    assert user.may_transact and user.risk_tier == pb.RISK_TIER_MEDIUM
    assert len(env.risk.requests) == 1


async def test_codes_are_single_use(env: IdentityEnv) -> None:
    """A code that passed cannot pass again (a new request with the right code is CODE_INVALID)."""
    person = new_person()
    user_id = await env.register(person)
    verification_id = await _start(env, user_id)
    code = env.notify.last_code_to(person.phone)
    request = pb.ConfirmVerificationRequest(idempotency_key=key(), verification_id=verification_id, code=code)
    first = await env.stub.ConfirmVerification(request)
    assert await env.stub.ConfirmVerification(request) == first  # same key: the first answer, replayed
    refused = await _refused(_confirm(env, verification_id, code))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.FAILED_PRECONDITION, "CODE_INVALID")


async def test_wrong_codes_are_counted_and_limited(env: IdentityEnv) -> None:
    """Each wrong code is CODE_INVALID; after the allowed attempts even the right code is TOO_MANY_ATTEMPTS."""
    person = new_person()
    user_id = await env.register(person)
    verification_id = await _start(env, user_id)
    code = env.notify.last_code_to(person.phone)
    for _ in range(env.settings.identity_code_max_attempts):
        refused = await _refused(_confirm(env, verification_id, _wrong(code)))
        assert reason_of(refused) == "CODE_INVALID"
    refused = await _refused(_confirm(env, verification_id, code))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.FAILED_PRECONDITION, "TOO_MANY_ATTEMPTS")


async def test_codes_expire(env: IdentityEnv) -> None:
    """Past its lifetime the right code is CODE_EXPIRED; a fresh code then works."""
    person = new_person()
    user_id = await env.register(person)
    verification_id = await _start(env, user_id)
    code = env.notify.last_code_to(person.phone)
    env.app.deps.clock = lambda: time.time() + env.settings.identity_code_ttl_seconds + 1
    refused = await _refused(_confirm(env, verification_id, code))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.FAILED_PRECONDITION, "CODE_EXPIRED")
    fresh = await _start(env, user_id)
    user = await _confirm(env, fresh, env.notify.last_code_to(person.phone))
    assert user.verifications.contact == pb.VERIFICATION_STATE_PASSED


async def test_codes_are_stored_only_as_keyed_hashes(env: IdentityEnv) -> None:
    """The challenge row holds an HMAC, never the code; requests for more codes per hour are rate-limited."""
    person = new_person()
    user_id = await env.register(person)
    codes = []
    for _ in range(env.settings.identity_codes_per_hour):
        await _start(env, user_id)
        codes.append(env.notify.last_code_to(person.phone))
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(challenges).where(challenges.c.user_id == user_id))).all()
    finally:
        await engine.dispose()
    assert len(rows) == len(codes)
    stored = " ".join(str(value) for row in rows for value in row)
    assert all(code not in stored for code in codes)
    assert all(len(row.code_hash) == 64 for row in rows)
    refused = await _refused(_start(env, user_id))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


async def test_malformed_confirmations_are_invalid_argument(env: IdentityEnv) -> None:
    """Missing ids, codes that are not six digits, an unknown channel: field violations, not INTERNAL."""
    refused = await _refused(
        env.stub.ConfirmVerification(
            pb.ConfirmVerificationRequest(idempotency_key=key(), verification_id="", code="12ab")
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field_violations_of(refused)) == ["code", "verification_id"]
    refused = await _refused(
        env.stub.StartVerification(pb.StartVerificationRequest(idempotency_key=key(), user_id="someone"))
    )
    assert field_violations_of(refused) == ["channel"]
    refused = await _refused(_confirm(env, "no-such-verification", "123456"))
    assert reason_of(refused) == "CODE_INVALID"


async def test_real_name_mismatch_and_registry_outage(env: IdentityEnv) -> None:
    """The registry over HTTP: mismatch is REAL_NAME_MISMATCH (state FAILED), unavailable is UNAVAILABLE
    REGISTRY_UNAVAILABLE (state unchanged, retry allowed), then a match passes."""
    person = new_person()
    user_id = await env.register(person)
    env.registry.script("mismatch", "unavailable")
    refused = await _refused(env.stub.CheckRealName(pb.CheckRealNameRequest(idempotency_key=key(), user_id=user_id)))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.FAILED_PRECONDITION, "REAL_NAME_MISMATCH")
    request = pb.CheckRealNameRequest(idempotency_key=key(), user_id=user_id)
    refused = await _refused(env.stub.CheckRealName(request))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.UNAVAILABLE, "REGISTRY_UNAVAILABLE")
    token = await env.mint(["support"])
    got = await env.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=(("authorization", f"Bearer {token}"),))
    assert got.user.verifications.real_name == pb.VERIFICATION_STATE_FAILED
    reply = await env.stub.CheckRealName(request)  # same key after an outage: tried again, not replayed
    assert reply.user.verifications.real_name == pb.VERIFICATION_STATE_PASSED
    assert env.registry.requests == 3


async def test_registry_knows_the_holder(env: IdentityEnv) -> None:
    """A number the registry holds under another name does not pass."""
    person = new_person()
    env.registry.register(person.id_number, "另一个人")
    user_id = await env.register(person)
    refused = await _refused(env.stub.CheckRealName(pb.CheckRealNameRequest(idempotency_key=key(), user_id=user_id)))
    assert reason_of(refused) == "REAL_NAME_MISMATCH"


async def test_risk_down_leaves_the_tier_unset(env: IdentityEnv) -> None:
    """Verification does not depend on risk: if AssessOnboarding fails the user is verified, untiered."""
    await env.others[1].server.stop(0)  # the risk stand-in
    person = new_person()
    user_id = await env.onboard(person)
    token = await env.mint(["support"])
    got = await env.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=(("authorization", f"Bearer {token}"),))
    assert got.user.may_transact and got.user.risk_tier == pb.RISK_TIER_UNSPECIFIED
