"""Operator bootstrap, run where the identity database is reachable: grant the first admin.

AssignRole needs an admin's token, so the very first admin comes from here:

    python -m finmesh.identity.admin grant-role USER_ID ADMIN

(FINMESH_DATABASE_URL / FINMESH_DATA_DIR as for the service). Every later
role goes through AssignRole, which is audited in the service's logs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from finmesh.identity.config import IdentitySettings
from finmesh.identity.store import users
from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.migrations import upgrade

OPERATOR_ROLES = ("SUPPORT", "RISK_OFFICER", "ADMIN")


async def grant_role(database_url: str, user_id: str, role: str) -> list[str]:
    """Add `role` to the user's roles; returns the roles afterwards."""
    if role not in OPERATOR_ROLES:
        raise ValueError(f"role must be one of {', '.join(OPERATOR_ROLES)}")
    engine = create_engine(database_url)
    try:
        # Same schema path as the service: a database this tool creates is one `migrate` recognises.
        await upgrade(engine, "identity")
        async with engine.begin() as conn:
            row = await users.get_user(conn, user_id)
            if row is None or row.erased_at is not None:
                raise ValueError("no such user (or erased)")
            roles = [r for r in row.roles.split(",") if r]
            if role not in roles:
                roles.append(role)
                await users.set_roles(conn, user_id, roles)
        return roles
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finmesh.identity.admin")
    sub = parser.add_subparsers(dest="command", required=True)
    grant = sub.add_parser("grant-role", help="grant an operator role to a user")
    grant.add_argument("user_id")
    grant.add_argument("role", choices=OPERATOR_ROLES)
    args = parser.parse_args(argv)
    settings = IdentitySettings()
    try:
        roles = asyncio.run(grant_role(settings.database_url_for("identity"), args.user_id, args.role))
    except ValueError as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    print(f"{args.user_id}: {','.join(roles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
