"""`finmesh audit verify`: check the payments audit chain, directly in the database or through the service.

Wire into finmesh.cli.main with `audit.add_parser(sub)`; the subcommand sets
its own func.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import grpc

from finmesh.payments.admin import database_url, report, verify_database
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc


def cmd_verify(args: argparse.Namespace) -> int:
    if args.target:
        try:
            with grpc.insecure_channel(args.target) as channel:
                metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
                reply = pb_grpc.PaymentsServiceStub(channel).VerifyAuditLog(
                    pb.VerifyAuditLogRequest(), timeout=args.timeout, metadata=metadata
                )
        except grpc.RpcError as error:
            code_name = error.code().name
            print(f"payments at {args.target} did not answer: {code_name}", file=sys.stderr)
            if code_name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                print(
                    "auth is enforced: set FINMESH_TOKEN to an admin's or risk officer's access token", file=sys.stderr
                )
            return 2
        intact, rows, broken = reply.intact, reply.rows_checked, reply.first_broken_sequence
        code = 0 if intact else 1
        line = json.dumps({"intact": intact, "rows_checked": rows, "first_broken_sequence": broken})
    else:
        code, line = report(asyncio.run(verify_database(database_url(args.database_url))))
    print(line)
    if code:
        print(f"audit log broken at sequence {json.loads(line)['first_broken_sequence']}", file=sys.stderr)
    return code


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="payments audit log")
    verbs = audit.add_subparsers(dest="audit_command", required=True)
    verify = verbs.add_parser("verify", help="walk the hash chain and name the first broken record (exit 1)")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--target", default="", help="ask a running payments service (host:port)")
    source.add_argument("--database-url", default="", help="read this database directly (default: local SQLite)")
    verify.add_argument("--timeout", type=float, default=30.0)
    verify.add_argument(
        "--token",
        default=os.environ.get("FINMESH_TOKEN", ""),
        help="with --target: an admin's or risk officer's access token (prefer FINMESH_TOKEN: a "
        "command line shows in the process list)",
    )
    verify.set_defaults(func=cmd_verify)
