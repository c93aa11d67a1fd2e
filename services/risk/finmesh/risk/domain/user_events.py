"""Identity's user events as risk reads them: what each asks risk to change, or why it cannot be taken.

Risk subscribes (FINMESH_EVENTS_FILTERS at identity) to three types; any other type is taken and ignored, so
a wider subscription never parks events. Each carries only what risk needs: the user id, and a country code
or a tier. An event whose payload is not what its type promises is refused (the producer retries it and
parks it after its attempts), never half-applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from finmesh.risk.domain.values import Tier

VERIFIED = "identity.user.verified.v1"
TIER_CHANGED = "identity.user.tier_changed.v1"
ERASED = "identity.user.erased.v1"

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_TIERS = {t.value for t in Tier if t is not Tier.UNSPECIFIED}


class Change(StrEnum):
    RESIDENCE = "residence"  # the user's country of residence
    TIER = "tier"  # the user's risk tier, as identity now holds it
    ERASURE = "erasure"  # forget what risk keeps that points at the person
    NONE = "none"  # of no interest to risk: taken, nothing changes


@dataclass(frozen=True)
class UserChange:
    change: Change
    user_id: str = ""
    country: str = ""
    tier: str = ""


@dataclass(frozen=True)
class Problem:
    field: str  # under the event's payload, e.g. "payload.country_of_residence"
    description: str


def read(event_type: str, user_id: str, payload: dict[str, str]) -> UserChange | Problem:
    """The change `payload` (flat text values) of an `event_type` event about `user_id` asks for."""
    if event_type not in (VERIFIED, TIER_CHANGED, ERASED):
        return UserChange(Change.NONE)
    user = user_id or payload.get("user_id", "")
    if not user:
        return Problem("user_id", "required: the user the event is about")
    if event_type == ERASED:
        return UserChange(Change.ERASURE, user)
    if event_type == TIER_CHANGED:
        tier = payload.get("tier", "")
        if tier not in _TIERS:
            return Problem("payload.tier", "one of LOW, MEDIUM, HIGH")
        return UserChange(Change.TIER, user, tier=tier)
    country = payload.get("country_of_residence", "")
    if not country:
        # A verified event from an identity older than the country in it: nothing to learn yet.
        return UserChange(Change.NONE, user)
    if not _COUNTRY.match(country):
        return Problem("payload.country_of_residence", "an ISO 3166-1 alpha-2 code, e.g. CN")
    return UserChange(Change.RESIDENCE, user, country=country)
