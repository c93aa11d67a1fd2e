"""After the last onboarding step passes: ask risk for the user's tier (best effort)."""

from __future__ import annotations

from typing import Any

import grpc

from finmesh.identity.api.deps import Deps, fully_verified
from finmesh.identity.domain.id_number import age_on, parse_id_number
from finmesh.identity.store import users
from finmesh.identity.store.schema import outbox
from finmesh.platform.channels import remaining_timeout
from finmesh.platform.logs import get_logger
from finmesh.platform.outbox import enqueue

_log = get_logger("finmesh.identity")


async def record_verified(conn: Any, user_id: str, row: Any) -> None:
    """In the transaction that passed the last step: tell the mesh the user may now transact."""
    if fully_verified(row):
        await enqueue(conn, outbox, event_type="identity.user.verified.v1", aggregate_id=user_id,
                      user_id=user_id, payload={"user_id": user_id})


async def assess_if_ready(d: Deps, user_id: str, context: grpc.aio.ServicerContext | None = None) -> None:
    """Once verified and not yet tiered, ask risk (AssessOnboarding). Risk down: the tier stays unset
    (payments applies its default tier) and the next verification call or a risk officer sets it."""
    if d.risk is None:
        return
    async with d.engine.connect() as conn:
        row = await users.get_user(conn, user_id)
    if row is None or not fully_verified(row) or row.risk_tier != "UNSPECIFIED":
        return
    # Age from the verified identity number: decrypted here, never logged or returned.
    id_number = users.reveal(d.vault, row, "id_number")
    age = age_on(parse_id_number(id_number, d.today()).birth_date, d.today())
    try:
        tier = await d.risk.onboarding_tier(user_id=user_id, age_years=age, kind=row.kind,
                                            timeout=remaining_timeout(context, d.settings.call_timeout_seconds))
    except grpc.aio.AioRpcError as error:
        _log.warning("onboarding_assessment_failed", user_id=user_id, code=error.code().name)
        return
    if not tier:
        return
    await set_tier(d, user_id, tier, "ONBOARDING")


async def write_tier(conn: Any, user_id: str, tier: str, reason: str) -> None:
    """In the caller's transaction: the new tier, and an event so the mesh hears of it."""
    await users.set_tier(conn, user_id, tier)
    await enqueue(conn, outbox, event_type="identity.user.tier_changed.v1", aggregate_id=user_id,
                  user_id=user_id, payload={"user_id": user_id, "tier": tier, "reason": reason})


async def set_tier(d: Deps, user_id: str, tier: str, reason: str) -> None:
    async with d.engine.begin() as conn:
        await write_tier(conn, user_id, tier, reason)
    d.on_commit()
    _log.info("risk_tier_set", user_id=user_id, tier=tier, reason=reason)
