"""The platform's auth pieces without servers: token format, key cache, service credentials, role table."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from finmesh.common.v1 import event_intake_pb2
from finmesh.identity.domain import totp
from finmesh.identity.v1 import identity_service_pb2
from finmesh.notify.v1 import notify_service_pb2
from finmesh.payments.v1 import payments_service_pb2
from finmesh.platform.auth.access import access_policy
from finmesh.platform.auth.keys import KeyCache, KeysUnavailable, PublishedKey, TokenVerifier
from finmesh.platform.auth.roles import ALL_ROLES, OWNED_FIELDS, ROLE_PERMISSIONS, SERVICE, VERIFIED_ONLY
from finmesh.platform.auth.service_tokens import check_credential, credential_for
from finmesh.platform.auth.tokens import AUDIENCE, ISSUER, TokenError, sign
from finmesh.risk.v1 import risk_service_pb2

DESCRIPTORS = [
    identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    payments_service_pb2.DESCRIPTOR.services_by_name["PaymentsService"],
    risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"],
    notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"],
    event_intake_pb2.DESCRIPTOR.services_by_name["EventIntakeService"],
]
KEY = Ed25519PrivateKey.generate()


def _claims(**changes: object) -> dict:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "u1",
        "roles": ["personal"],
        "tier": "low",
        "vrf": True,
        "iat": now,
        "exp": now + 60,
        "jti": "j1",
        **changes,
    }


class _Fetcher:
    def __init__(self, keys: list[PublishedKey]) -> None:
        self.keys = keys
        self.calls = 0
        self.down = False

    async def __call__(self) -> list[PublishedKey]:
        self.calls += 1
        if self.down:
            raise ConnectionError("identity down")
        return self.keys


def _verifier(fetcher: _Fetcher, **options: float) -> TokenVerifier:
    return TokenVerifier(KeyCache(fetcher, **options))  # type: ignore[arg-type]


async def test_a_valid_token_names_its_holder() -> None:
    fetcher = _Fetcher([PublishedKey("k1", KEY.public_key())])
    principal = await _verifier(fetcher).verify(sign(_claims(), KEY, "k1"))
    assert (principal.subject, principal.roles, principal.risk_tier, principal.verified) == (
        "u1",
        frozenset({"personal"}),
        "low",
        True,
    )
    assert principal.is_customer and "payments.payment.create" in principal.permissions


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "TOKEN_EXPIRED"),
        ({"iat": int(time.time()) + 600}, "TOKEN_INVALID"),
        ({"iss": "someone-else"}, "TOKEN_INVALID"),
        ({"aud": "another-audience"}, "TOKEN_INVALID"),
        ({"roles": "admin"}, "TOKEN_INVALID"),
        ({"sub": ""}, "TOKEN_INVALID"),
        ({"exp": "tomorrow"}, "TOKEN_INVALID"),
    ],
)
async def test_bad_claims_are_refused(claims: dict, reason: str) -> None:
    fetcher = _Fetcher([PublishedKey("k1", KEY.public_key())])
    with pytest.raises(TokenError) as refused:
        await _verifier(fetcher).verify(sign(_claims(**claims), KEY, "k1"))
    assert refused.value.reason == reason


async def test_retired_keys_stop_at_not_after() -> None:
    """A key past its not_after verifies nothing, whatever its tokens say."""
    fetcher = _Fetcher([PublishedKey("old", KEY.public_key(), not_after=time.time() - 1)])
    with pytest.raises(TokenError) as refused:
        await _verifier(fetcher).verify(sign(_claims(), KEY, "old"))
    assert refused.value.reason == "TOKEN_EXPIRED"


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "x" * 5000, "é.é.é", "e30.e30.AAAA", "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.e30." + "A" * 86],
)
async def test_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(TokenError) as refused:
        await _verifier(_Fetcher([])).verify(token)
    assert refused.value.reason == "TOKEN_INVALID"


async def test_cached_keys_outlive_identity_and_unknown_kids_are_rate_limited() -> None:
    """Keys fetched once keep verifying while identity is down; a flood of unknown kids causes a bounded
    number of fetches, and each unknown kid at most one fetch per interval."""
    fetcher = _Fetcher([PublishedKey("k1", KEY.public_key())])
    cache = KeyCache(fetcher, refresh_seconds=0.0, unknown_kid_interval=60, unknown_kid_fetches_per_second=3)
    verifier = TokenVerifier(cache)
    token = sign(_claims(), KEY, "k1")
    await verifier.verify(token)
    fetcher.down = True
    for _ in range(5):
        assert (await verifier.verify(token)).subject == "u1"
    calls = fetcher.calls
    for n in range(20):
        with pytest.raises(TokenError):
            await verifier.verify(sign(_claims(), KEY, f"junk-{n}"))
    assert fetcher.calls - calls <= 3
    await cache.close()


def test_service_credentials() -> None:
    """A credential is bound to its service name and the mesh secret; unknown services get none."""
    secret = b"mesh-secret"
    good = credential_for(secret, "payments")
    assert good.startswith("payments.") and check_credential(secret, "payments", good)
    assert not check_credential(secret, "risk", good)
    assert not check_credential(b"other", "payments", good)
    assert not check_credential(secret, "intruder", credential_for(secret, "intruder"))


def test_every_permission_in_the_table_is_declared_by_some_rpc() -> None:
    """No role grants a permission that no RPC declares (a typo would silently grant nothing)."""
    declared = {access_policy(m).permission for d in DESCRIPTORS for m in d.methods}
    granted = set().union(*ROLE_PERMISSIONS.values())
    assert granted - declared == set()
    assert declared >= VERIFIED_ONLY
    assert set(ROLE_PERMISSIONS) == set(ALL_ROLES)


def test_internal_rpcs_are_for_services_only_and_owned_fields_exist() -> None:
    """internal_only RPCs are granted to the service role only; every ownership rule names a real field."""
    for d in DESCRIPTORS:
        for m in d.methods:
            policy = access_policy(m)
            if policy.internal_only:
                assert [r for r, p in ROLE_PERMISSIONS.items() if policy.permission in p] == [SERVICE]
            path = OWNED_FIELDS.get(f"/{d.full_name}/{m.name}")
            if path:
                message = m.input_type
                for part in path.split("."):
                    field = message.fields_by_name[part]
                    message = field.message_type
                assert field.type == field.TYPE_STRING


def test_totp_matches_rfc_6238_vectors() -> None:
    """RFC 6238 appendix B, SHA-1 (truncated to 6 digits)."""
    secret = b"12345678901234567890"
    for at, code in ((59, "287082"), (1111111109, "081804"), (1234567890, "005924"), (2000000000, "279037")):
        assert totp.code_at(secret, at) == code
    assert totp.matching_step(secret, "287082", 59, last_step=0) == 1
    assert totp.matching_step(secret, "287082", 59, last_step=1) is None  # used once already
    assert base64.b32decode(base64.b32encode(totp.new_secret())).__len__() == 20


async def test_a_cold_cache_with_identity_unreachable_says_unavailable_and_recovers() -> None:
    """Before the first fetch succeeds the service cannot tell a good token from a forged one: the caller
    hears a retryable UNAVAILABLE, not a token refusal, and its retry verifies once identity answers."""
    fetcher = _Fetcher([PublishedKey("k1", KEY.public_key())])
    fetcher.down = True
    verifier = _verifier(fetcher, unknown_kid_interval=60)
    token = sign(_claims(), KEY, "k1")
    with pytest.raises(KeysUnavailable):
        await verifier.verify(token)
    fetcher.down = False
    assert (await verifier.verify(token)).subject == "u1"
    await verifier.close()
