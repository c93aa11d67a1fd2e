"""Users as the other use cases read them: unknown and erased users refused, and the user as answers show it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from finmesh.identity.domain.onboarding import fully_verified
from finmesh.identity.store import mfa, users
from finmesh.identity.usecases.deps import Deps
from finmesh.platform.errors import FailedPrecondition, NotFound
from finmesh.platform.storage.db import aware


@dataclass(frozen=True)
class UserView:
    """A user as other services see them: personal data masked, the onboarding steps, roles and tier."""

    user_id: str
    kind: str  # PERSONAL, ENTERPRISE or INSTITUTION
    legal_name_masked: str
    id_number_masked: str
    phone_masked: str
    email_masked: str
    id_number_check: str  # PENDING, PASSED or FAILED
    contact_check: str
    real_name_check: str
    may_transact: bool
    risk_tier: str  # LOW, MEDIUM, HIGH or UNSPECIFIED
    roles: list[str]
    totp_enabled: bool
    locale: str
    created_at: datetime
    erased: bool


def roles_of(row: Any) -> list[str]:
    return [r for r in row.roles.split(",") if r]


def view(row: Any, *, totp_enabled: bool = False) -> UserView:
    return UserView(
        user_id=row.user_id,
        kind=row.kind,
        legal_name_masked=row.legal_name_masked,
        id_number_masked=row.id_number_masked,
        phone_masked=row.phone_masked,
        email_masked=row.email_masked,
        id_number_check=row.id_number_check,
        contact_check=row.contact_check,
        real_name_check=row.real_name_check,
        may_transact=fully_verified(row),
        risk_tier=row.risk_tier,
        roles=roles_of(row),
        totp_enabled=totp_enabled,
        locale=row.locale,
        created_at=aware(row.created_at),
        erased=row.erased_at is not None,
    )


async def shown(conn: AsyncConnection, row: Any) -> UserView:
    """`row` as answers show it, with whether the user has an authenticator."""
    return view(row, totp_enabled=await mfa.totp_enabled(conn, row.user_id))


async def load_user(conn: AsyncConnection, user_id: str, *, allow_erased: bool = False) -> Any:
    row = await users.get_user(conn, user_id)
    if row is None:
        raise NotFound("USER_NOT_FOUND", "user not found")
    if row.erased_at is not None and not allow_erased:
        raise FailedPrecondition("USER_ERASED", "this user's personal data was erased")
    return row


async def get_user(d: Deps, user_id: str) -> UserView:
    """GetUser: erased users too (shown as erased, nothing personal left)."""
    async with d.engine.connect() as conn:
        row = await load_user(conn, user_id, allow_erased=True)
        return await shown(conn, row)
