"""Identity's verification keys as a JSON Web Key Set (RFC 7517), each an OKP Ed25519 key (RFC 8037).

What an edge proxy (Envoy `jwt_authn`, Istio `RequestAuthentication`) or any JWT library (PyJWT's
`PyJWKClient`, jose, ...) fetches to verify identity's tokens without speaking gRPC: the same keys
GetPublicKeys answers, retired ones included until their tokens can no longer be valid.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from finmesh.platform.auth.tokens import ALGORITHM

# How long a verifier may cache the set (Cache-Control max-age): as long as the mesh's own services wait
# between refreshes of their key cache (auth_keys_refresh_seconds), so a rotation reaches an edge proxy that
# honours it about as soon as it reaches the services.
MAX_AGE_SECONDS = 60
PATH = "/.well-known/jwks.json"


def jwk(kid: str, public_key: bytes) -> dict[str, str]:
    """One raw 32-byte Ed25519 public key as a JWK: `x` is the key itself, base64url without padding."""
    if len(public_key) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    x = base64.urlsafe_b64encode(public_key).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALGORITHM, "use": "sig"}


def jwk_set(keys: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    """{"keys": [...]} for (kid, raw public key) pairs, in the order given (identity's: oldest first)."""
    return {"keys": [jwk(kid, public_key) for kid, public_key in keys]}


def body_and_etag(document: dict[str, Any]) -> tuple[bytes, str]:
    """The set's bytes (stable: sorted keys, no spaces) and a strong ETag of them, so a conditional GET
    (If-None-Match) costs a 304 until the keys change."""
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
