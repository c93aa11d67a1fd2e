"""Login: password plus a second factor (SMS code or TOTP), token contents, refresh, revocation, service tokens."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlparse

import grpc
import pytest

from finmesh.identity.admin import grant_role
from finmesh.identity.domain import totp
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.auth.service_tokens import credential_for
from finmesh.platform.rpc.guard import reason_of
from tests.identity.harness import PASSWORD, SERVICE_SECRET, IdentityEnv, key, md, new_person, retry_delay, violations


def _part(token: str, index: int) -> dict:
    text = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def _login(env: IdentityEnv, login: str, password: str = PASSWORD) -> pb.LoginResponse:
    return await env.stub.Login(pb.LoginRequest(idempotency_key=key(), login=login, password=password))


async def test_login_needs_the_second_factor_and_yields_a_signed_token(env: IdentityEnv) -> None:
    """Password alone yields a challenge (code by SMS); the code yields an EdDSA JWT with the user's claims."""
    person = new_person()
    user_id = await env.onboard(person)
    challenge = await _login(env, person.email.upper())  # e-mail logins ignore case
    assert challenge.challenge_id and not challenge.HasField("tokens")
    assert challenge.challenge_channel == pb.VERIFICATION_CHANNEL_SMS and not challenge.totp_accepted
    reply = await env.stub.CompleteLogin(
        pb.CompleteLoginRequest(
            idempotency_key=key(), challenge_id=challenge.challenge_id, code=env.notify.last_code_to(person.phone)
        )
    )
    tokens = reply.tokens
    header, claims = _part(tokens.access_token, 0), _part(tokens.access_token, 1)
    keys = await env.stub.GetPublicKeys(pb.GetPublicKeysRequest())
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": keys.active_key_id}
    assert claims["sub"] == user_id and claims["roles"] == ["personal"]
    assert claims["tier"] == "low" and claims["vrf"] is True
    assert claims["exp"] - claims["iat"] == env.settings.identity_access_token_ttl_seconds
    assert claims["iss"] == "finmesh-identity" and claims["aud"] == "finmesh" and claims["jti"]
    assert tokens.access_expires_at.seconds == claims["exp"]
    assert tokens.refresh_token.startswith("rt_") and tokens.refresh_token not in tokens.access_token
    # The token works where identity.user.read is needed, for the user's own record only.
    await env.stub.GetUser(pb.GetUserRequest(user_id=user_id), metadata=md(tokens.access_token))
    other = await env.register(new_person())
    refused = await _refused(env.stub.GetUser(pb.GetUserRequest(user_id=other), metadata=md(tokens.access_token)))
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_MISSING")


async def test_bad_credentials_look_the_same_and_slow_down_after_a_run(env: IdentityEnv) -> None:
    """Unknown login and wrong password are both BAD_CREDENTIALS with the same words; after five wrong
    passwords in a row this address must wait (TOO_MANY_ATTEMPTS, with a retry delay), even with the right
    password. test_identity_login_throttle.py has the rest: growing delays, and the owner elsewhere unharmed."""
    person = new_person()
    await env.register(person)
    unknown = await _refused(_login(env, "+8613000000000"))
    wrong = await _refused(_login(env, person.phone, "wrong password!"))
    assert (
        (unknown.code(), reason_of(unknown), unknown.details())
        == (wrong.code(), reason_of(wrong), wrong.details())
        == (grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS", "wrong login or password")
    )
    for _ in range(env.settings.identity_login_max_failures - 1):
        await _refused(_login(env, person.phone, "wrong password!"))
    slowed = await _refused(_login(env, person.phone))
    assert (slowed.code(), reason_of(slowed)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS")
    assert 0 < (retry_delay(slowed) or 0) <= env.settings.identity_login_base_delay_seconds


async def test_a_too_long_password_is_told_so(env: IdentityEnv) -> None:
    """A 201-character password is INVALID_ARGUMENT "too long" with the bound, not "required"; an empty one
    is "required"."""
    too_long = await _refused(_login(env, "+8613000000000", "p" * 201))
    assert too_long.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(too_long) == {"password": "too long: at most 128 characters"}
    empty = await _refused(_login(env, "+8613000000000", ""))
    assert violations(empty) == {"password": "required"}


async def test_login_codes_are_limited_and_single_use(env: IdentityEnv) -> None:
    """A wrong login code is CODE_INVALID; a used challenge cannot complete a second login."""
    person = new_person()
    await env.register(person)
    challenge = await _login(env, person.phone)
    code = env.notify.last_code_to(person.phone)
    bad = await _refused(
        env.stub.CompleteLogin(
            pb.CompleteLoginRequest(
                idempotency_key=key(), challenge_id=challenge.challenge_id, code=f"{(int(code) + 7) % 10**6:06d}"
            )
        )
    )
    assert reason_of(bad) == "CODE_INVALID"
    await env.stub.CompleteLogin(
        pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=challenge.challenge_id, code=code)
    )
    again = await _refused(
        env.stub.CompleteLogin(
            pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=challenge.challenge_id, code=code)
        )
    )
    assert reason_of(again) == "CODE_INVALID"


async def test_totp_enrolment_and_login(env: IdentityEnv) -> None:
    """EnrollTotp gives a 160-bit secret (otpauth URI); ConfirmTotp enables it; login then takes an
    authenticator code instead of an SMS, and a code is accepted once only."""
    person = new_person()
    user_id = await env.onboard(person)
    token = (await env.login(person)).access_token
    enrolment = await env.stub.EnrollTotp(
        pb.EnrollTotpRequest(idempotency_key=key(), user_id=user_id), metadata=md(token)
    )
    uri = urlparse(enrolment.provisioning_uri)
    params = {k: v[0] for k, v in parse_qs(uri.query).items()}
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert (params["digits"], params["period"], params["algorithm"]) == ("6", "30", "SHA1")
    secret = base64.b32decode(params["secret"] + "=" * (-len(params["secret"]) % 8))
    assert len(secret) * 8 == 160
    wrong = await _refused(
        env.stub.ConfirmTotp(
            pb.ConfirmTotpRequest(
                idempotency_key=key(),
                user_id=user_id,
                code=f"{(int(totp.code_at(secret, time.time())) + 1) % 10**6:06d}",
            ),
            metadata=md(token),
        )
    )
    assert reason_of(wrong) == "CODE_INVALID"
    # Confirm with the previous step's code (clock drift is tolerated), so the login below uses a newer one.
    confirmed = await env.stub.ConfirmTotp(
        pb.ConfirmTotpRequest(idempotency_key=key(), user_id=user_id, code=totp.code_at(secret, time.time() - 30)),
        metadata=md(token),
    )
    assert confirmed.user.totp_enabled
    sms_before = len(env.notify.sent)
    challenge = await _login(env, person.phone)
    assert challenge.totp_accepted and len(env.notify.sent) == sms_before  # no SMS for TOTP users
    code = totp.code_at(secret, time.time())
    reply = await env.stub.CompleteLogin(
        pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=challenge.challenge_id, code=code)
    )
    assert reply.tokens.access_token
    replayed = await _refused(
        env.stub.CompleteLogin(
            pb.CompleteLoginRequest(
                idempotency_key=key(), challenge_id=(await _login(env, person.phone)).challenge_id, code=code
            )
        )
    )
    assert reason_of(replayed) == "CODE_INVALID"
    other = await env.register(new_person())
    refused = await _refused(
        env.stub.EnrollTotp(pb.EnrollTotpRequest(idempotency_key=key(), user_id=other), metadata=md(token))
    )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_refresh_rotates_and_a_reused_token_ends_the_session(env: IdentityEnv) -> None:
    """A refresh token works once (a retry with the same key replays the same pair); presenting a
    spent token again revokes the whole login, so the thief's newer token dies too."""
    person = new_person()
    await env.onboard(person)
    first = await env.login(person)
    request = pb.RefreshTokenRequest(idempotency_key=key(), refresh_token=first.refresh_token)
    second = (await env.stub.RefreshToken(request)).tokens
    assert (await env.stub.RefreshToken(request)).tokens == second
    assert second.refresh_token != first.refresh_token and second.access_token != first.access_token
    reused = await _refused(
        env.stub.RefreshToken(pb.RefreshTokenRequest(idempotency_key=key(), refresh_token=first.refresh_token))
    )
    assert (reused.code(), reason_of(reused)) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    dead = await _refused(
        env.stub.RefreshToken(pb.RefreshTokenRequest(idempotency_key=key(), refresh_token=second.refresh_token))
    )
    assert reason_of(dead) == "TOKEN_INVALID"


async def test_refresh_carries_new_roles_and_logout_revokes(env: IdentityEnv) -> None:
    """A role granted meanwhile reaches the refreshed token; RevokeToken ends the session."""
    person = new_person()
    user_id = await env.onboard(person)
    tokens = await env.login(person)
    admin = await env.mint(["admin"])
    await env.stub.AssignRole(
        pb.AssignRoleRequest(idempotency_key=key(), user_id=user_id, role=pb.ROLE_SUPPORT), metadata=md(admin)
    )
    refreshed = (
        await env.stub.RefreshToken(pb.RefreshTokenRequest(idempotency_key=key(), refresh_token=tokens.refresh_token))
    ).tokens
    assert _part(refreshed.access_token, 1)["roles"] == ["personal", "support"]
    revoked = await env.stub.RevokeToken(
        pb.RevokeTokenRequest(idempotency_key=key(), refresh_token=refreshed.refresh_token),
        metadata=md(refreshed.access_token),
    )
    assert revoked.revoked_sessions == 1
    refused = await _refused(
        env.stub.RefreshToken(pb.RefreshTokenRequest(idempotency_key=key(), refresh_token=refreshed.refresh_token))
    )
    assert reason_of(refused) == "TOKEN_INVALID"


async def test_service_tokens_need_the_service_credential(env: IdentityEnv) -> None:
    """GetServiceToken answers a ROLE_SERVICE token for a known service with its credential, nothing else."""
    good = credential_for(SERVICE_SECRET.encode(), "payments")
    reply = await env.stub.GetServiceToken(pb.GetServiceTokenRequest(service="payments", credential=good))
    claims = _part(reply.access_token, 1)
    assert (claims["sub"], claims["roles"]) == ("service:payments", ["service"])
    for service, credential in (
        ("payments", credential_for(b"another secret", "payments")),
        ("risk", good),
        ("mallory", credential_for(SERVICE_SECRET.encode(), "mallory")),
    ):
        refused = await _refused(
            env.stub.GetServiceToken(pb.GetServiceTokenRequest(service=service, credential=credential))
        )
        assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS")


async def test_first_admin_is_bootstrapped_then_grants_roles(env: IdentityEnv) -> None:
    """The operator tool grants the first admin; that admin's login token can then AssignRole; customers
    cannot, and service or customer roles are not assignable."""
    founder, colleague = new_person(), new_person()
    founder_id, colleague_id = await env.onboard(founder), await env.register(colleague)
    assert await grant_role(env.database_url, founder_id, "ADMIN") == ["PERSONAL", "ADMIN"]
    admin_token = (await env.login(founder)).access_token
    assert _part(admin_token, 1)["roles"] == ["admin", "personal"]
    granted = await env.stub.AssignRole(
        pb.AssignRoleRequest(idempotency_key=key(), user_id=colleague_id, role=pb.ROLE_RISK_OFFICER),
        metadata=md(admin_token),
    )
    assert list(granted.user.roles) == [pb.ROLE_PERSONAL, pb.ROLE_RISK_OFFICER]
    bad = await _refused(
        env.stub.AssignRole(
            pb.AssignRoleRequest(idempotency_key=key(), user_id=colleague_id, role=pb.ROLE_SERVICE),
            metadata=md(admin_token),
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    customer = await env.mint(["personal"], sub=colleague_id)
    denied = await _refused(
        env.stub.AssignRole(
            pb.AssignRoleRequest(idempotency_key=key(), user_id=colleague_id, role=pb.ROLE_ADMIN), metadata=md(customer)
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_login_while_the_signing_key_is_due_for_a_reread(env: IdentityEnv) -> None:
    """Tokens are signed inside the login's write transaction; re-reading the active key then must not wait
    behind that transaction (on SQLite it would queue for the write lock until the busy timeout)."""
    person = new_person()
    await env.onboard(person)
    env.app.deps.keys._reload_seconds = 0.0  # every signature finds the cached key due for a re-read
    for _ in range(3):
        challenge = await env.stub.Login(
            pb.LoginRequest(idempotency_key=key(), login=person.phone, password=PASSWORD), timeout=5
        )
        reply = await env.stub.CompleteLogin(
            pb.CompleteLoginRequest(
                idempotency_key=key(), challenge_id=challenge.challenge_id, code=env.notify.last_code_to(person.phone)
            ),
            timeout=5,
        )
        assert _part(reply.tokens.access_token, 1)["sub"]
