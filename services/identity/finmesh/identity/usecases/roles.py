"""Operator roles: granted by an admin (AssignRole), or for the very first admin by the operator CLI
(python -m finmesh.identity.admin). Customer roles follow the user's kind and ROLE_SERVICE belongs to
services: only these are granted."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from finmesh.identity.store import mfa, users
from finmesh.identity.usecases.deps import Deps
from finmesh.identity.usecases.users import UserView, load_user, roles_of, view
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.idempotency import KeyedCall, Reply

_log = get_logger("finmesh.identity")
OPERATOR_ROLES = ("SUPPORT", "RISK_OFFICER", "ADMIN")


async def _add_role(conn: AsyncConnection, row: Any, role: str) -> list[str]:
    roles = roles_of(row)
    if role not in roles:
        roles.append(role)
        await users.set_roles(conn, row.user_id, roles)
    return roles


async def assign_role(d: Deps, call: KeyedCall[UserView, Reply], user_id: str, role: str) -> Reply:
    async def op(conn: Any) -> UserView:
        row = await load_user(conn, user_id)
        await _add_role(conn, row, role)
        return view(await users.get_user(conn, row.user_id), totp_enabled=await mfa.totp_enabled(conn, row.user_id))

    reply = await call.run(d.idem, op)
    _log.info("role_assigned", user_id=user_id, role=role)
    return reply


async def grant_role(engine: AsyncEngine, user_id: str, role: str) -> list[str]:
    """The operator CLI's grant (`role` one of OPERATOR_ROLES); returns the user's roles afterwards."""
    async with engine.begin() as conn:
        row = await users.get_user(conn, user_id)
        if row is None or row.erased_at is not None:
            raise ValueError("no such user (or erased)")
        return await _add_role(conn, row, role)
