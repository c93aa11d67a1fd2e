"""Password guessing is slowed, never turned into a lockout of the owner (issue 16, defect 7).

The server listens on both stacks, so the tests have two real client addresses: the owner
connects over 127.0.0.1 (peer ipv4:127.0.0.1), the attacker over ::1 (peer ipv6:[::1]).
Small thresholds and delays keep the waits short: three free failures per address, delays
from 0.1 s doubling up to 0.8 s, and six failures across addresses put the account under
its global throttle.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import grpc
import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from finmesh.identity.domain import totp
from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from finmesh.platform.rpc.guard import reason_of
from tests.identity.harness import PASSWORD, IdentityEnv, identity_env, key, md, new_person, retry_delay

WRONG = "not the password"
FREE, BASE, CAP, ACCOUNT = 3, 0.1, 0.8, 6
SETTINGS = {
    "host": "[::]",
    "identity_login_max_failures": FREE,
    "identity_login_base_delay_seconds": BASE,
    "identity_login_max_delay_seconds": CAP,
    "identity_login_account_failures": ACCOUNT,
}


@pytest.fixture
async def env(databases, tmp_path: Path) -> AsyncIterator[IdentityEnv]:
    async with identity_env(databases, tmp_path, **SETTINGS) as e:
        yield e


@pytest.fixture
async def attacker(env: IdentityEnv) -> AsyncIterator[pb_grpc.IdentityServiceStub]:
    """A client of the same server from another address (::1)."""
    async with grpc.aio.insecure_channel(f"[::1]:{env.server.port}") as channel:
        yield pb_grpc.IdentityServiceStub(channel)


async def _login(
    stub: pb_grpc.IdentityServiceStub, login: str, password: str, metadata: tuple[tuple[str, str], ...] = ()
) -> pb.LoginResponse:
    return await stub.Login(pb.LoginRequest(idempotency_key=key(), login=login, password=password), metadata=metadata)


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def _guess(
    stub: pb_grpc.IdentityServiceStub, login: str, failures: int, metadata: tuple[tuple[str, str], ...] = ()
) -> list[float]:
    """Wrong passwords until `failures` were answered BAD_CREDENTIALS (or a challenge, once the account's
    verdicts are held), waiting out each throttle; the delays met. Stops at a refusal without a delay."""
    delays: list[float] = []
    answered = 0
    while answered < failures:
        try:
            await _login(stub, login, WRONG, metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                answered += 1
                continue
            assert (error.code(), reason_of(error)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS")
            delay = retry_delay(error)
            if delay is None:
                return delays  # a fixed lockout: nothing to wait for
            delays.append(delay)
            await asyncio.sleep(delay)
        else:
            answered += 1  # a held verdict: a challenge whatever the password
    return delays


async def _attempts(env: IdentityEnv) -> list[tuple[str, str, str]]:
    async with env.app.engine.connect() as conn:
        rows = await conn.execute(text("SELECT subject, address, outcome FROM login_attempts ORDER BY id"))
        return [tuple(row) for row in rows]


async def test_an_attacker_elsewhere_does_not_lock_the_owner_out(env: IdentityEnv, attacker) -> None:
    """Many wrong passwords from another address, past the account's global threshold: the owner still logs
    in from the address they used before, password and SMS code as always."""
    person = new_person()
    await env.onboard(person)
    await env.login(person)  # 127.0.0.1 is now an address the owner logged in from
    await _guess(attacker, person.phone, ACCOUNT + 2)
    tokens = await env.login(person)
    assert tokens.access_token


async def test_the_second_factor_lets_the_owner_in_from_a_new_address(env: IdentityEnv, attacker) -> None:
    """Under the global throttle, a new address gets a challenge whatever the password: the verdict is held
    until the second factor is shown. The owner (right password, then the SMS code) gets in; a guesser cannot
    tell a right password from a wrong one; a wrong password sends no SMS."""
    person = new_person()
    await env.onboard(person)  # never logged in: 127.0.0.1 is as new as the attacker's address
    await _guess(attacker, person.phone, ACCOUNT + 1)
    sent = len(env.notify.sent)
    mistyped = await _login(env.stub, person.phone, WRONG)
    challenge = await _login(env.stub, person.phone, PASSWORD)
    assert [(c.challenge_channel, c.totp_accepted) for c in (mistyped, challenge)] == [
        (pb.VERIFICATION_CHANNEL_SMS, False)
    ] * 2
    code = await _next_code(env, person.phone, sent)
    assert len(env.notify.sent) == sent + 1  # the mistyped password sent nothing
    wrong = await _refused(
        env.stub.CompleteLogin(
            pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=mistyped.challenge_id, code=code)
        )
    )
    assert reason_of(wrong) == "CODE_INVALID"
    reply = await env.stub.CompleteLogin(
        pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=challenge.challenge_id, code=code)
    )
    assert reply.tokens.access_token

    # The attacker's address is slowed; when it may try again, right and wrong passwords answer alike.
    answers = []
    for password in (PASSWORD, WRONG):
        while True:
            try:
                answers.append(await _login(attacker, person.phone, password))
                break
            except grpc.aio.AioRpcError as error:
                assert reason_of(error) == "TOO_MANY_ATTEMPTS", error
                await asyncio.sleep(retry_delay(error) or 0)
    assert [(a.challenge_channel, a.totp_accepted) for a in answers] == [(pb.VERIFICATION_CHANNEL_SMS, False)] * 2
    for answer in answers:
        wrong_code = await _refused(
            env.stub.CompleteLogin(
                pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=answer.challenge_id, code="000000")
            )
        )
        assert reason_of(wrong_code) == "CODE_INVALID"


async def test_with_an_authenticator_the_held_verdict_follows_the_code(env: IdentityEnv, attacker) -> None:
    """A TOTP user under the global throttle, from a new address: with a right authenticator code, a mistyped
    password is BAD_CREDENTIALS (told only now) and the right one gets the tokens."""
    person = new_person()
    user_id = await env.onboard(person)
    owner = md(await env.mint(["personal"], sub=user_id))
    enrolment = await env.stub.EnrollTotp(pb.EnrollTotpRequest(idempotency_key=key(), user_id=user_id), metadata=owner)
    secret = parse_qs(urlparse(enrolment.provisioning_uri).query)["secret"][0]
    secret_bytes = base64.b32decode(secret + "=" * (-len(secret) % 8))
    await env.stub.ConfirmTotp(
        pb.ConfirmTotpRequest(
            idempotency_key=key(), user_id=user_id, code=totp.code_at(secret_bytes, time.time() - 30)
        ),
        metadata=owner,
    )
    await _guess(attacker, person.phone, ACCOUNT + 1)
    code = totp.code_at(secret_bytes, time.time())
    mistyped = await _login(env.stub, person.phone, WRONG)
    assert mistyped.totp_accepted
    refused = await _refused(
        env.stub.CompleteLogin(
            pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=mistyped.challenge_id, code=code)
        )
    )
    assert (refused.code(), reason_of(refused)) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS")
    challenge = await _login(env.stub, person.phone, PASSWORD)
    reply = await env.stub.CompleteLogin(
        pb.CompleteLoginRequest(idempotency_key=key(), challenge_id=challenge.challenge_id, code=code)
    )
    assert reply.tokens.access_token


async def _next_code(env: IdentityEnv, phone: str, sent_before: int) -> str:
    """The code of the next SMS to `phone` (a held verdict's SMS leaves after the answer)."""
    for _ in range(100):
        new = [r for r in env.notify.sent[sent_before:] if r.address == phone]
        if new:
            return new[-1].params["code"]
        await asyncio.sleep(0.02)
    raise AssertionError("no code was sent")


async def test_an_attacker_is_slowed_with_growing_delays(databases, tmp_path: Path) -> None:
    """After the free failures, each failure doubles the wait (RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS with a
    RetryInfo delay), up to the cap; a forwarded-for header from an untrusted peer changes nothing. (Delays
    from 0.5 s here: each must outlast the next call's way to the check on a busy machine.)"""
    base, cap = 0.5, 2.0
    async with (
        identity_env(
            databases,
            tmp_path,
            **{**SETTINGS, "identity_login_base_delay_seconds": base, "identity_login_max_delay_seconds": cap},
        ) as env,
        grpc.aio.insecure_channel(f"[::1]:{env.server.port}") as channel,
    ):
        attacker = pb_grpc.IdentityServiceStub(channel)
        person = new_person()
        await env.register(person)
        delays = await _guess(attacker, person.phone, FREE + 4)
        assert len(delays) == 4, delays
        assert all(later > earlier * 1.5 for earlier, later in itertools.pairwise(delays[:3])), delays
        assert base * 0.5 < delays[0] <= base and cap * 0.5 < delays[-1] <= cap, delays
        refused = await _refused(_login(attacker, person.phone, PASSWORD, (("x-forwarded-for", "203.0.113.9"),)))
        assert reason_of(refused) == "TOO_MANY_ATTEMPTS" and 0 < (retry_delay(refused) or 0) <= cap


async def test_forwarded_addresses_count_only_behind_a_trusted_proxy(databases, tmp_path: Path) -> None:
    """With the local peers named trusted proxies, X-Forwarded-For's address is the client's: two clients
    behind the proxy have their own throttles."""
    async with identity_env(
        databases,
        tmp_path,
        **{**SETTINGS, "identity_login_base_delay_seconds": 30},
        identity_login_trusted_proxies="127.0.0.1/32, ::1/128",
    ) as env:
        person = new_person()
        await env.register(person)
        first = (("x-forwarded-for", "198.51.100.7, 127.0.0.1"),)
        await _guess(env.stub, person.phone, FREE, first)
        assert reason_of(await _refused(_login(env.stub, person.phone, WRONG, first))) == "TOO_MANY_ATTEMPTS"
        second = (("x-forwarded-for", "198.51.100.8"),)
        wrong = await _refused(_login(env.stub, person.phone, WRONG, second))
        assert reason_of(wrong) == "BAD_CREDENTIALS"
        addresses = {address for _, address, _ in await _attempts(env)}
        assert len(addresses) == 2


async def test_attempts_are_recorded_without_clear_personal_data(env: IdentityEnv, attacker) -> None:
    """Every password attempt is a row (who, when, from where, outcome): the user id, or a keyed hash of an
    unknown login; a keyed hash of the address. Logs name neither the address nor the login."""
    person = new_person()
    user_id = await env.onboard(person)
    with capture_logs() as logs:
        await env.login(person)
        await _login(env.stub, person.phone, PASSWORD)
        await _refused(_login(attacker, person.phone, WRONG))
        await _refused(_login(attacker, "+8613000000001", WRONG))
    rows = await _attempts(env)
    assert [(subject, outcome) for subject, _, outcome in rows] == [
        (user_id, "PASSED"),
        (user_id, "COMPLETED"),
        (user_id, "PASSED"),
        (user_id, "FAILED"),
        (rows[-1][0], "FAILED"),
    ]
    unknown = rows[-1][0]
    assert unknown != user_id and "8613000000001" not in unknown
    owner_address, attacker_address = rows[0][1], rows[3][1]
    assert owner_address != attacker_address and rows[-1][1] == attacker_address
    for _, address, _ in rows:
        assert len(address) <= 32 and "127.0.0.1" not in address and "::1" not in address
    async with env.app.engine.connect() as conn:
        at = (await conn.execute(text("SELECT at FROM login_attempts"))).scalars().all()
    assert len(at) == len(rows) and all(at)
    shown = repr(logs)
    for secret in ("127.0.0.1", "::1", person.phone, "8613000000001", WRONG, PASSWORD):
        assert secret not in shown
