"""What an access token says: claims of user and service tokens (signed by identity's key ring)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from finmesh.platform.auth.roles import SERVICE
from finmesh.platform.auth.tokens import AUDIENCE, ISSUER


@dataclass(frozen=True)
class Subject:
    """The parts of a user that other services act on without asking identity."""

    user_id: str
    roles: tuple[str, ...]  # stored role names, e.g. ("PERSONAL", "ADMIN")
    risk_tier: str  # LOW, MEDIUM, HIGH or UNSPECIFIED
    verified: bool


def user_claims(subject: Subject, now: int, ttl: int) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject.user_id,
        "roles": sorted(role.lower() for role in subject.roles),
        # Payments applies per-tier limits from this, without calling identity.
        "tier": "" if subject.risk_tier == "UNSPECIFIED" else subject.risk_tier.lower(),
        "vrf": subject.verified,
        "iat": now,
        "exp": now + ttl,
        "jti": str(uuid.uuid4()),
    }


def service_claims(service: str, now: int, ttl: int) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": f"service:{service}",
        "roles": [SERVICE],
        "iat": now,
        "exp": now + ttl,
        "jti": str(uuid.uuid4()),
    }
