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
from finmesh.identity.usecases import roles
from finmesh.identity.usecases.roles import OPERATOR_ROLES
from finmesh.platform.storage.db import create_engine
from finmesh.platform.storage.migrations import upgrade


async def grant_role(database_url: str, user_id: str, role: str) -> list[str]:
    """Add `role` to the user's roles; returns the roles afterwards."""
    if role not in OPERATOR_ROLES:
        raise ValueError(f"role must be one of {', '.join(OPERATOR_ROLES)}")
    engine = create_engine(database_url)
    try:
        # Same schema path as the service: a database this tool creates is one `migrate` recognises.
        await upgrade(engine, "identity")
        return await roles.grant_role(engine, user_id, role)
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
        roles_after = asyncio.run(grant_role(settings.database_url_for("identity"), args.user_id, args.role))
    except ValueError as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    print(f"{args.user_id}: {','.join(roles_after)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
