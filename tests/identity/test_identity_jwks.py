"""Identity's JWKS (/.well-known/jwks.json) read by an independent client, PyJWT's PyJWKClient, as an edge proxy
or a non-Python service would: tokens from a real CompleteLogin verify, before and after RotateSigningKey, and a
retired key keeps verifying its tokens until it retires."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from typing import Any

import aiohttp
import jwt
import pytest
from multidict import CIMultiDict

from finmesh.identity.v1 import identity_service_pb2 as pb
from finmesh.platform.auth.tokens import AUDIENCE, ISSUER
from tests.identity.harness import IdentityEnv, key, md, new_person

pytestmark = pytest.mark.timeout(60)


def jwks_url(env: IdentityEnv) -> str:
    assert env.app.jwks is not None and env.app.jwks.port
    return f"http://127.0.0.1:{env.app.jwks.port}/.well-known/jwks.json"


async def verify(client: jwt.PyJWKClient, token: str) -> dict[str, Any]:
    """PyJWT's whole check: the key picked by the token's kid from the JWKS, signature, iss, aud, exp.
    PyJWKClient fetches with blocking urllib: in a thread, so the server on this loop can answer it."""
    signing_key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
    claims: dict[str, Any] = jwt.decode(token, signing_key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER)
    return claims


async def logged_in(env: IdentityEnv) -> tuple[str, str]:
    """A real user, onboarded and logged in (password + SMS code): (user id, access token)."""
    person = new_person()
    user_id = await env.onboard(person)
    return user_id, (await env.login(person)).access_token


async def rotate(env: IdentityEnv) -> str:
    reply = await env.stub.RotateSigningKey(
        pb.RotateSigningKeyRequest(idempotency_key=key()), metadata=md(await env.mint(["admin"]))
    )
    return reply.active_key_id


async def test_pyjwt_verifies_login_tokens_before_and_after_a_rotation(env: IdentityEnv) -> None:
    """One PyJWKClient throughout: it verifies a login token, then (meeting the new kid, it fetches the set again)
    a token signed after RotateSigningKey, and still the token from before; once the retired key's overlap has
    passed it is gone from the set and its token no longer verifies."""
    # lifespan: the set's max-age. cooldown 0: refetch at once on an unknown kid (PyJWT's default waits 30 s
    # after a fetch, so a key rotated within that is refused until then: docs/DEPLOY.md says so).
    client = jwt.PyJWKClient(jwks_url(env), lifespan=60, cooldown_duration=0)
    user_id, before = await logged_in(env)
    claims = await verify(client, before)
    assert (claims["sub"], claims["iss"], claims["aud"], claims["vrf"]) == (user_id, ISSUER, AUDIENCE, True)
    assert set(claims) == {"iss", "aud", "sub", "roles", "tier", "vrf", "iat", "exp", "jti"}
    # Without the audience PyJWT refuses the token: why the README lists `aud` with its value.
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(before, await asyncio.to_thread(client.get_signing_key_from_jwt, before), algorithms=["EdDSA"])

    old_kid = jwt.get_unverified_header(before)["kid"]
    new_kid = await rotate(env)
    _, after = await logged_in(env)
    assert jwt.get_unverified_header(after)["kid"] == new_kid != old_kid
    assert (await verify(client, after))["sub"] != user_id
    assert (await verify(client, before))["sub"] == user_id  # the retired key still verifies its tokens

    # Past the overlap (the longest token life plus leeway) the retired key is no longer published.
    ring = env.app.deps.keys
    later = ring.now() + timedelta(seconds=env.settings.identity_access_token_ttl_seconds + 61)
    ring._clock = later.timestamp  # the key ring's clock: when published keys are judged
    fresh = jwt.PyJWKClient(jwks_url(env))
    assert [k.key_id for k in await asyncio.to_thread(fresh.get_signing_keys)] == [new_kid]
    with pytest.raises(jwt.PyJWKClientError):
        await verify(fresh, before)


async def test_jwks_serves_okp_ed25519_keys_with_caching_headers(env: IdentityEnv) -> None:
    """The set holds exactly GetPublicKeys' keys as OKP/Ed25519 JWKs; it may be cached for a minute and
    revalidated by ETag, and a rotation shows in the very next answer with a new ETag."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

        async def get(**headers: str) -> tuple[int, CIMultiDict[str], Any]:
            async with http.get(jwks_url(env), headers=headers) as reply:
                body = await reply.json(content_type=None) if reply.status == 200 else None
                return reply.status, reply.headers.copy(), body  # names case-insensitive, as HTTP's are

        status, headers, body = await get()
        assert status == 200 and headers["Content-Type"].startswith("application/jwk-set+json")
        assert headers["Cache-Control"] == "public, max-age=60"
        assert headers["Server"] == "finmesh-identity"  # no aiohttp or Python version for scanners
        published = {k.key_id: k.public_key for k in (await env.stub.GetPublicKeys(pb.GetPublicKeysRequest())).keys}
        assert [k["kid"] for k in body["keys"]] == list(published)
        for jwk in body["keys"]:
            assert {k: v for k, v in jwk.items() if k not in ("kid", "x")} == {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
            }
            assert "=" not in jwk["x"] and base64.urlsafe_b64decode(jwk["x"] + "=") == published[jwk["kid"]]

        etag = headers["ETag"]
        status, headers, _ = await get(**{"If-None-Match": etag})
        assert (status, headers["ETag"], headers["Cache-Control"]) == (304, etag, "public, max-age=60")

        new_kid = await rotate(env)
        status, headers, body = await get(**{"If-None-Match": etag})
        assert status == 200 and headers["ETag"] != etag
        assert [k["kid"] for k in body["keys"]] == [*published, new_kid]


async def test_a_jwks_port_of_minus_one_serves_none(databases: Any, tmp_path: Any) -> None:
    """FINMESH_JWKS_PORT=-1: no listener, and the runner announces port 0 for it."""
    from tests.identity.harness import identity_env

    async with identity_env(databases, tmp_path, jwks_port=-1) as env:
        assert env.app.jwks is None and env.app.http_ports() == {"jwks_port": 0}
