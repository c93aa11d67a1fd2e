"""A group-commit batch with one payment the database refuses: how long until the others are committed.

    python -m bench.poisoned [--db sqlite|postgres|both] [--rounds 3] [--sizes 21,64,256]

N payments are submitted to the ledger writer together (one batch), one of them poisoned (PostgreSQL: a NUL in
its description; SQLite, which stores NUL: an unpaired surrogate, which no driver encodes). Two ways to commit
the rest, measured in the same run on the same database: halves (finmesh.platform.storage.group_commit, the writer's
way) and each payment alone (the writers' way before), swapped in as the writer's `split`. Prints the median
seconds from submission until every caller has its answer, and the transactions that committed. Never passes
or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.ledger import APPROVED, LIMITS, NO_CHANNEL_CAPS, UNLIMITED, _database_url, _drop, _funded_wallets
from finmesh.payments import app as payments_app
from finmesh.payments.api import convert
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.domain.payments import CaptureMode, PaymentRequest
from finmesh.payments.usecases import payments as usecase
from finmesh.payments.usecases.ledger_writer import Command
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.money import Money
from finmesh.platform.observability.logs import configure_logging
from finmesh.platform.rpc.server import create_server
from finmesh.platform.storage.db import is_transient
from finmesh.platform.storage.group_commit import commit_apart
from finmesh.platform.storage.idempotency import ANONYMOUS
from tests.auth import Issuer
from tests.auth import channel as acting_channel

POISON = {"sqlite": "poisoned \ud800", "postgres": "poisoned \x00"}


async def each_alone(
    items: Sequence[Any], commit: Callable[[list[Any]], Awaitable[Sequence[Any]]], *, writer: str
) -> list[Any]:
    """The writers' way before group_commit: a failed batch's items retried one transaction each."""
    try:
        return list(await commit(list(items)))
    except Exception as error:  # noqa: BLE001 - as the writers did
        if len(items) == 1 or is_transient(error):
            return [error] * len(items)
    return [result for item in items for result in await each_alone([item], commit, writer=writer)]


def payment(payer: str, payee: str, description: str) -> Command:
    request = PaymentRequest(payer, payee, Money("CNY", 100), CaptureMode.AUTOMATIC, description)
    payment_id = key = str(uuid.uuid4())

    async def action(uow: Any) -> Any:
        return await usecase.create_payment(uow, payment_id, request, APPROVED, LIMITS)

    return Command(
        method="CreatePayment",
        scope=ANONYMOUS,
        key=key,
        fingerprint=key.encode(),
        response_type=pb.CreatePaymentResponse,
        action=action,
        render=lambda state: pb.CreatePaymentResponse(payment=convert.payment(state)),
        accounts=(payer, payee),
    )


async def one_round(app: Any, wallets: list[str], size: int, poison: str) -> tuple[float, int]:
    commands = [
        payment(wallets[i % len(wallets)], wallets[(i + 1) % len(wallets)], poison if i == size // 3 else "")
        for i in range(size)
    ]
    batches = app.writer.batches
    started = time.perf_counter()
    results = await asyncio.gather(*(app.writer.submit(c) for c in commands), return_exceptions=True)
    elapsed = time.perf_counter() - started
    failed = sum(isinstance(r, BaseException) for r in results)
    assert failed == 1, f"{failed} payments failed, expected the poisoned one only"
    return elapsed, app.writer.batches - batches


async def measure(kind: str, rounds: int, sizes: list[int]) -> list[tuple[str, int, str, float, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        url = await _database_url(kind, Path(tmp))
        if url is None:
            return []
        issuer = await Issuer().start()
        settings = PaymentsSettings(
            host="127.0.0.1",
            port=0,
            data_dir=Path(tmp),
            database_url=url,
            tracing_enabled=False,
            tier_limits=UNLIMITED,
            channel_caps=NO_CHANNEL_CAPS,
            risk_target="127.0.0.1:1",
            notify_target="127.0.0.1:1",
            service_name="payments",
            **issuer.settings(),
        )
        app = await payments_app.build(settings)
        await app.writer.prepare()
        app.writer.start()
        running = await create_server(settings, app.registrations)
        found = []
        try:
            async with acting_channel(f"127.0.0.1:{running.port}", issuer) as channel:
                wallets = await _funded_wallets(pb_grpc.PaymentsServiceStub(channel), 50)
            for size in sizes:
                for name, way in (("halves", commit_apart), ("each alone", each_alone)):
                    app.writer.split = way
                    runs = [await one_round(app, wallets, size, POISON[kind]) for _ in range(rounds)]
                    found.append(
                        (
                            kind,
                            size,
                            name,
                            statistics.median(r[0] for r in runs),
                            int(statistics.median(r[1] for r in runs)),
                        )
                    )
                    print(f"{kind} {size} {name}: {found[-1][3]:.3f} s, {found[-1][4]} commits", flush=True)
        finally:
            app.writer.split = commit_apart
            await running.server.stop(0)
            await app.writer.stop()
            for authorizer in running.authorizers:
                await authorizer.close()
            await issuer.stop()
            await app.close()
            await _drop(url)
        return found


def main(argv: list[str] | None = None) -> int:
    configure_logging("payments-bench", level="error")  # a split logs a warning per failed part
    parser = argparse.ArgumentParser(
        prog="python -m bench.poisoned", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="21,64,256")
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [row for kind in kinds for row in asyncio.run(measure(kind, args.rounds, sizes))]
    print("\n| database | batch | way | seconds until all answered (median) | commits |")
    print("|---|---|---|---|---|")
    for kind, size, name, seconds, commits in rows:
        print(f"| {kind} | {size} | {name} | {seconds:.3f} | {commits} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
