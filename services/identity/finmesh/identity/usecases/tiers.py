"""Risk tiers: set at onboarding from risk's assessment, or by a risk officer (SetRiskTier); the mesh hears of
each change through the outbox."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.store import mfa, users
from finmesh.identity.store.schema import outbox
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.users import UserView, load_user, view
from finmesh.platform.messaging.outbox import enqueue
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")


async def write_tier(conn: AsyncConnection, user_id: str, tier: str, reason: str) -> None:
    """In the caller's transaction: the new tier, and an event so the mesh hears of it."""
    await users.set_tier(conn, user_id, tier)
    await enqueue(
        conn,
        outbox,
        event_type="identity.user.tier_changed.v1",
        aggregate_id=user_id,
        user_id=user_id,
        payload={"user_id": user_id, "tier": tier, "reason": reason},
    )


async def set_tier(d: Deps, user_id: str, tier: str, reason: str) -> None:
    async with d.engine.begin() as conn:
        await write_tier(conn, user_id, tier, reason)
    d.on_commit()
    _log.info("risk_tier_set", user_id=user_id, tier=tier, reason=reason)


async def set_risk_tier(d: Deps, call: KeyedCall[UserView, Reply], user_id: str, tier: str, reason: str) -> Reply:
    """SetRiskTier: a risk officer's (or risk's) tier, erased users included."""

    async def op(conn: Any) -> UserView:
        row = await load_user(conn, user_id, allow_erased=True)
        await write_tier(conn, row.user_id, tier, reason)
        totp_on = await mfa.totp_enabled(conn, row.user_id)
        return view(await users.get_user(conn, row.user_id), totp_enabled=totp_on)

    reply = await call.run(d.idem, op)
    d.on_commit()
    _log.info("risk_tier_set", user_id=user_id, tier=tier, reason=reason)
    return reply
