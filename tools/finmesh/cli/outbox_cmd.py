"""`finmesh outbox`: what an operator needs for a service's relay dead letters: stats, list, redrive, purge.

finmesh outbox --service payments stats
finmesh outbox --service payments list
finmesh outbox --service payments redrive EVENT_ID [EVENT_ID ...]   (or --all)
finmesh outbox --database-url postgresql+asyncpg://... purge --older-than-days 30
finmesh outbox --service identity --consumer risk list       (each consumer has its own dead events)

With FINMESH_EVENTS_TRANSPORT=rabbitmq an event can also die on the far side of the broker, in a consumer's
dead letters (refused by it, or failing FINMESH_EVENTS_MAX_DELIVERIES times); --broker lists and redrives those,
for the consumer named by --consumer, on the broker of FINMESH_RABBITMQ_URL (+ FINMESH_RABBITMQ_VHOST):

finmesh outbox --consumer notify list --broker
finmesh outbox --consumer notify redrive --broker MESSAGE_ID [...]   (or --all)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiormq
from sqlalchemy import MetaData

from finmesh.cli.broker import amqp_url
from finmesh.platform.config import ServiceSettings
from finmesh.platform.messaging.fanout import ROW_CONSUMER, fanout_tables
from finmesh.platform.messaging.outbox import outbox_table
from finmesh.platform.messaging.outbox_admin import list_dead, outbox_stats, purge_delivered, redrive_dead
from finmesh.platform.messaging.rabbitmq.dead_letters import list_dead_letters, redrive_dead_letters
from finmesh.platform.messaging.rabbitmq.topology import Broker
from finmesh.platform.storage.db import create_engine

PRODUCERS = ("payments", "identity", "risk")


def add_outbox_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "outbox",
        help="inspect a service's outbox; list and redrive dead events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--service",
        choices=PRODUCERS,
        default="payments",
        help="whose outbox (its SQLite file in --data-dir unless --database-url)",
    )
    parser.add_argument("--database-url", default="", help="SQLAlchemy async URL of the service's database")
    parser.add_argument(
        "--consumer",
        default=ROW_CONSUMER,
        help="whose deliveries (stats, list, redrive): notify, risk, ...; with --broker: whose dead letters",
    )
    actions = parser.add_subparsers(dest="outbox_command", required=True)
    actions.add_parser("stats", help="pending, dead and delivered counts")
    listing = actions.add_parser("list", help="dead events, oldest first")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after-id", type=int, default=0, help="page on from this row id")
    listing.add_argument("--broker", action="store_true", help="the consumer's dead letters on RabbitMQ instead")
    redrive = actions.add_parser("redrive", help="put dead events back in line after fixing the cause")
    redrive.add_argument("event_ids", nargs="*")
    redrive.add_argument("--all", action="store_true", help="every dead event")
    redrive.add_argument("--broker", action="store_true", help="the consumer's dead letters on RabbitMQ instead")
    purge = actions.add_parser("purge", help="delete delivered events older than N days")
    purge.add_argument("--older-than-days", type=float, default=30.0)
    parser.set_defaults(func=cmd_outbox)


def _url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    path = Path(args.data_dir) / f"{args.service}.db"
    if not path.exists():
        raise FileNotFoundError(f"no database at {path}; pass --database-url")
    return f"sqlite+aiosqlite:///{path}"


async def _broker(args: argparse.Namespace) -> int:
    # The services' own settings, so the operator names the broker exactly as the mesh does (URL, vhost, prefix).
    broker = Broker.from_settings(ServiceSettings(events_transport="rabbitmq", rabbitmq_url=amqp_url()))
    if args.outbox_command == "list":
        dead = await list_dead_letters(broker, args.consumer, limit=args.limit)
        for d in dead:
            print(f"{d.message_id}\t{d.event_type}\t{d.producer}\t{d.queue}\tdeliveries={d.deliveries}\t{d.reason}")
        print(f"{len(dead)} dead letter(s) of {args.consumer} at {broker.where}", file=sys.stderr)
        return 0
    if not args.all and not args.event_ids:
        print("name message ids, or pass --all", file=sys.stderr)
        return 2
    count = await redrive_dead_letters(broker, args.consumer, None if args.all else args.event_ids)
    print(f"redriven {count} dead letter(s) to {args.consumer}")
    if not args.all and count < len(args.event_ids):
        print("some ids were not among the dead letters", file=sys.stderr)
        return 1
    return 0


async def _run(args: argparse.Namespace) -> int:
    if getattr(args, "broker", False):
        return await _broker(args)
    engine = create_engine(_url(args))
    metadata = MetaData()
    table = outbox_table(metadata)
    fanout_tables(metadata)
    consumer = args.consumer
    try:
        if args.outbox_command == "stats":
            stats = await outbox_stats(engine, table, consumer=consumer)
            oldest = stats.oldest_pending_at.isoformat() if stats.oldest_pending_at else "-"
            print(f"pending {stats.pending}  dead {stats.dead}  delivered {stats.delivered}  oldest pending {oldest}")
        elif args.outbox_command == "list":
            dead = await list_dead(engine, table, limit=args.limit, after_id=args.after_id, consumer=consumer)
            for e in dead:
                print(
                    f"{e.id}\t{e.event_id}\t{e.event_type}\t{e.aggregate_id}#{e.sequence}\t"
                    f"attempts={e.attempts}\t{e.occurred_at.isoformat()}\t{e.last_error}"
                )
            print(f"{len(dead)} dead event(s)", file=sys.stderr)
        elif args.outbox_command == "redrive":
            if not args.all and not args.event_ids:
                print("name event ids, or pass --all", file=sys.stderr)
                return 2
            count = await redrive_dead(engine, table, None if args.all else args.event_ids, consumer=consumer)
            print(f"redriven {count} event(s)")
            if not args.all and count < len(args.event_ids):
                print("some ids were not dead (or unknown)", file=sys.stderr)
                return 1
        else:
            count = await purge_delivered(engine, table, timedelta(days=args.older_than_days))
            print(f"purged {count} delivered event(s)")
    finally:
        await engine.dispose()
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    except (OSError, aiormq.exceptions.AMQPError) as error:
        # Names the broker without its credentials.
        print(f"broker: {type(error).__name__}", file=sys.stderr)
        return 2
