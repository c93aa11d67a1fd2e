"""Where a user's risk tier comes from: the caller's access token, else payments' own table.

Identity owns tiers (set at onboarding from risk's assessment) and signs
them into access tokens (`tier` claim). A customer paying presents their own
token, so `PrincipalTierSource` takes their tier from it without a read.
For anyone else (an operator or service acting on a user's account, or
FINMESH_AUTH_MODE=off) payments keeps a copy per user in `account_tiers`,
written through the internal admin command
(`python -m finmesh.payments.admin set-tier USER TIER`); a user without a row
gets FINMESH_DEFAULT_TIER.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from finmesh.payments.store.connection import Connection
from finmesh.payments.store.schema import account_tiers
from finmesh.platform.auth.context import current_principal

MAX_TIER = 20


class TierSource(Protocol):
    async def tiers(self, conn: Connection, owner_ids: Collection[str]) -> dict[str, str]:
        """The tier of every owner asked about (unknown owners get a default, never a gap)."""
        ...


# Built once: building the statement costs more than running it.
_TIERS_OF = select(account_tiers.c.owner_id, account_tiers.c.tier).where(
    account_tiers.c.owner_id.in_(bindparam("owners", expanding=True))
)


class TableTierSource:
    def __init__(self, default_tier: str) -> None:
        self._default = default_tier

    async def tiers(self, conn: Connection, owner_ids: Collection[str]) -> dict[str, str]:
        wanted = sorted(set(owner_ids))
        found: dict[str, str] = {}
        if wanted:
            found = {r.owner_id: r.tier for r in await conn.execute(_TIERS_OF, {"owners": wanted})}
        return {owner: found.get(owner, self._default) for owner in wanted}


class PrincipalTierSource:
    """The tier in the calling customer's token for their own user id; `fallback` for everyone else.

    The ledger writer runs commands in its own task: the servicer hands it the
    caller (finmesh.payments.api.common.ServicerBase.submit), so this reads the
    same principal there as in the handler.
    """

    TOKEN_TIERS = frozenset({"low", "medium", "high"})

    def __init__(self, fallback: TierSource) -> None:
        self._fallback = fallback

    async def tiers(self, conn: Connection, owner_ids: Collection[str]) -> dict[str, str]:
        wanted = set(owner_ids)
        principal = current_principal()
        found: dict[str, str] = {}
        if (
            principal is not None
            and principal.is_customer
            and principal.subject in wanted
            and principal.risk_tier in self.TOKEN_TIERS
        ):
            found[principal.subject] = principal.risk_tier
        rest = wanted - found.keys()
        if rest:
            found.update(await self._fallback.tiers(conn, rest))
        return found


async def set_tier(engine: AsyncEngine, owner_id: str, tier: str) -> None:
    """Record `owner_id`'s tier (insert or replace)."""
    if not owner_id or len(owner_id) > 64 or not tier or len(tier) > MAX_TIER:
        raise ValueError("owner id (1..64 chars) and tier (1..20 chars) are required")
    now = datetime.now(UTC)
    t = account_tiers.c
    async with engine.begin() as conn:
        result = await conn.execute(
            update(account_tiers).where(t.owner_id == owner_id).values(tier=tier, updated_at=now)
        )
        if result.rowcount == 0:
            await conn.execute(insert(account_tiers).values(owner_id=owner_id, tier=tier, updated_at=now))
