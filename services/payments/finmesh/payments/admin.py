"""Operator commands run against the payments database: verify the audit chain, set a user's risk tier.

    python -m finmesh.payments.admin audit-verify [--database-url URL]
    python -m finmesh.payments.admin set-tier USER_ID TIER [--database-url URL]

Without --database-url the service's own setting (FINMESH_DATABASE_URL or the
SQLite file in FINMESH_DATA_DIR) is used. audit-verify exits 0 when the chain
is intact and 1 naming the first broken record otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from finmesh.payments.config import PaymentsSettings
from finmesh.payments.domain.audit import Verification
from finmesh.payments.store import queries
from finmesh.payments.store.tiers import set_tier
from finmesh.platform.storage.db import create_engine


def database_url(explicit: str) -> str:
    """The URL to use: the one given, else the service's own setting."""
    return explicit or PaymentsSettings().database_url_for("payments")


async def verify_database(url: str) -> Verification:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await queries.verify_audit(conn)
    finally:
        await engine.dispose()


def report(result: Verification) -> tuple[int, str]:
    """Exit code and the one JSON line operators (and scripts) read."""
    line = json.dumps(
        {
            "intact": result.intact,
            "rows_checked": result.rows_checked,
            "first_broken_sequence": result.first_broken_sequence,
        }
    )
    return (0 if result.intact else 1), line


async def _set_tier(url: str, user_id: str, tier: str) -> None:
    engine = create_engine(url)
    try:
        await set_tier(engine, user_id, tier)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="finmesh-payments-admin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="", help="SQLAlchemy async URL (default: the service's setting)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("audit-verify", help="walk the hash-chained audit log and name the first broken record")
    tier = sub.add_parser("set-tier", help="record a user's risk tier (until tiers travel in access tokens)")
    tier.add_argument("user_id")
    tier.add_argument("tier")
    args = parser.parse_args(argv)
    url = database_url(args.database_url)
    if args.command == "audit-verify":
        code, line = report(asyncio.run(verify_database(url)))
        print(line)
        if code:
            print(f"audit log broken at sequence {json.loads(line)['first_broken_sequence']}", file=sys.stderr)
        return code
    asyncio.run(_set_tier(url, args.user_id, args.tier))
    print(json.dumps({"user_id": args.user_id, "tier": args.tier}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
