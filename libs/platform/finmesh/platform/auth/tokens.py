"""Access tokens: compact JWS (RFC 7515) signed with Ed25519 ("EdDSA", RFC 8037), i.e. standard JWTs.

`base64url(header).base64url(claims).base64url(signature)`; header
{"alg": "EdDSA", "typ": "JWT", "kid": ...}; claims iss, aud, sub, roles,
tier, vrf (verified), iat, exp, jti. Any JWT library with EdDSA reads them.
Written here in a few lines rather than pulling in PyJWT: the verifier
accepts exactly one algorithm and picks the key by kid only, so the classic
JWT pitfalls ("alg": "none", HMAC with a public key) cannot arise.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
ISSUER = "finmesh-identity"
AUDIENCE = "finmesh"
# Far above any token we issue; refuses junk before any parsing work.
MAX_TOKEN_LENGTH = 4096


class TokenError(Exception):
    """Why a token is refused; `reason` is TOKEN_INVALID or TOKEN_EXPIRED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ParsedToken:
    """A token split and decoded, signature not yet checked."""

    kid: str
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def sign(claims: dict[str, Any], private_key: Ed25519PrivateKey, kid: str) -> str:
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": kid}
    signing_input = f"{_b64encode(_json(header))}.{_b64encode(_json(claims))}"
    return f"{signing_input}.{_b64encode(private_key.sign(signing_input.encode()))}"


def parse(token: str) -> ParsedToken:
    """Split and decode; refuses anything that is not a well-formed EdDSA JWS."""
    invalid = TokenError("TOKEN_INVALID", "malformed token")
    if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2 or not token.isascii():
        raise invalid
    head, body, sig = token.split(".")
    try:
        header = json.loads(_b64decode(head))
        claims = json.loads(_b64decode(body))
        signature = _b64decode(sig)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise invalid
    if header.get("alg") != ALGORITHM or not isinstance(header.get("kid"), str) or len(signature) != 64:
        raise TokenError("TOKEN_INVALID", "unsupported token algorithm or key id")
    return ParsedToken(header["kid"], claims, f"{head}.{body}".encode(), signature)


def check_signature(parsed: ParsedToken, public_key: Ed25519PublicKey) -> None:
    try:
        public_key.verify(parsed.signature, parsed.signing_input)
    except InvalidSignature:
        raise TokenError("TOKEN_INVALID", "bad token signature") from None


def check_claims(claims: dict[str, Any], now: float, leeway: float) -> None:
    """Issuer, audience, times and claim types; call after the signature checked out."""
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise TokenError("TOKEN_INVALID", "token lacks exp or iat")
    if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE:
        raise TokenError("TOKEN_INVALID", "token from another issuer or for another audience")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise TokenError("TOKEN_INVALID", "token lacks a subject")
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise TokenError("TOKEN_INVALID", "token roles malformed")
    if iat > now + leeway:
        raise TokenError("TOKEN_INVALID", "token issued in the future")
    if exp <= now - leeway:
        raise TokenError("TOKEN_EXPIRED", "token expired")
