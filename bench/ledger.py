"""Ledger benchmarks, each beside a baseline measured in the same run on the same database.

    python -m bench.ledger [--db sqlite|postgres|both] [--rounds 5]

1. BatchCreateTransfers over gRPC (1000 transfers per call) against raw
   multi-row INSERTs of the same number of rows into the same database, in one
   transaction. "Same row count" is every row the batch call inserted
   (transfers, ledger entries, audit records, its idempotency answer).
2. Concurrent single payments through the CreatePayment handler (validation,
   idempotency, pre-checks, the ledger writer; risk answered in-process and
   no network hop, so the ledger is what is measured) against one-commit-per-row
   INSERTs. The writer commits concurrent payments together (group commit).

Beside the rates, this process's CPU time per payment (event loop and driver
threads) for the writer alone and the whole handler: on a busy machine the
rates swing with the neighbours' load, the CPU per payment much less.

Prints medians of the rounds and the ratios. Never passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, func, insert, select

from finmesh.common.v1 import money_pb2
from finmesh.payments import app as payments_app
from finmesh.payments.api import convert
from finmesh.payments.clients.risk import RiskVerdict
from finmesh.payments.config import PaymentsSettings
from finmesh.payments.domain.limits import LimitPolicy
from finmesh.payments.domain.payments import CaptureMode, PaymentRequest, RiskDecision
from finmesh.payments.store.schema import audit_log, entries, idempotency, transfers
from finmesh.payments.usecases import payments as usecase
from finmesh.payments.usecases.ledger_writer import Command, LedgerWriter
from finmesh.payments.usecases.payments import LimitRules
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.money import Money
from finmesh.platform.observability.logs import configure_logging
from finmesh.platform.rpc.server import create_server
from finmesh.platform.storage.db import create_engine, create_schema
from finmesh.platform.storage.idempotency import ANONYMOUS, request_fingerprint
from tests.auth import Issuer, bearer
from tests.auth import channel as acting_channel

WALLETS = 200
UNLIMITED = {
    tier: {"CNY": {"single": 10**15, "daily_amount": 10**17, "daily_count": 10**9}}
    for tier in ("low", "medium", "high")
}
# The wallets are funded with one large top-up each, past the channels' default caps.
NO_CHANNEL_CAPS = {"*": {"CNY": {"top_up": 10**15, "payout": 10**15}}}

_raw_metadata = MetaData()
# About as wide as a ledger entry, with a primary key to maintain, like the ledger's tables.
raw_rows = Table(
    "bench_raw_rows",
    _raw_metadata,
    Column("row_id", String(36), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


APPROVED = RiskVerdict("bench", 0, RiskDecision.APPROVE, ())
LIMITS = LimitRules(LimitPolicy(PaymentsSettings(tier_limits=UNLIMITED).limit_table()), 480)


class ApprovingRisk:
    """Risk's answer without its network hop: this benchmark measures the ledger, not risk."""

    async def assess(self, facts: Any, timeout: float) -> RiskVerdict:
        return APPROVED


def cny(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="CNY", minor_units=minor)


def _raw_values(count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {
            "row_id": str(uuid.uuid4()),
            "account_id": f"acct-{i % WALLETS}",
            "amount": i + 1,
            "currency": "CNY",
            "kind": "BENCH",
            "created_at": now,
        }
        for i in range(count)
    ]


async def raw_batched_rows_per_second(engine: Any, rows: int) -> float:
    values = _raw_values(rows)
    started = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(insert(raw_rows), values)
    return rows / (time.perf_counter() - started)


async def raw_commit_per_row_per_second(engine: Any, rows: int) -> float:
    values = _raw_values(rows)
    started = time.perf_counter()
    for value in values:
        async with engine.begin() as conn:
            await conn.execute(insert(raw_rows).values(**value))
    return rows / (time.perf_counter() - started)


async def _count_rows(engine: Any) -> int:
    total = 0
    async with engine.connect() as conn:
        for table in (transfers, entries, audit_log, idempotency.scoped):
            total += int(await conn.scalar(select(func.count()).select_from(table)))
    return total


@dataclass
class Figures:
    database: str
    batch_transfers_per_s: float
    batch_rows_per_transfer: float
    raw_batched_rows_per_s: float
    payments_per_s: float
    payments_per_commit: float
    raw_commit_rows_per_s: float
    handler_payments_per_s: float = 0.0
    handler_payments_per_commit: float = 0.0
    # Process CPU (event loop and driver threads) per payment: steadier than rates on a busy machine.
    payments_cpu_us: float = 0.0
    handler_cpu_us: float = 0.0

    @property
    def batch_ratio_same_rows(self) -> float:
        """Raw time / API time for the same number of inserted rows."""
        return self.batch_transfers_per_s * self.batch_rows_per_transfer / self.raw_batched_rows_per_s

    @property
    def batch_ratio_per_transfer(self) -> float:
        """Transfers/s against raw rows/s, as if a transfer were one row (the harshest reading)."""
        return self.batch_transfers_per_s / self.raw_batched_rows_per_s

    @property
    def payments_ratio(self) -> float:
        return self.payments_per_s / self.raw_commit_rows_per_s

    @property
    def handler_ratio(self) -> float:
        return self.handler_payments_per_s / self.raw_commit_rows_per_s

    @property
    def handler_cpu_ratio(self) -> float:
        """CPU per payment through the whole handler over CPU per payment of the ledger write alone."""
        return self.handler_cpu_us / self.payments_cpu_us


async def _database_url(kind: str, tmp: Path) -> str | None:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'bench-payments.db'}"
    import asyncpg

    name = f"fmbench_ledger_{uuid.uuid4().hex[:8]}"
    try:
        admin = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres", timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        print(f"postgres skipped: {error}", file=sys.stderr)
        return None
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


async def _drop(url: str) -> None:
    if not url.startswith("postgresql"):
        return
    import asyncpg

    admin = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


async def run_database(kind: str, rounds: int, batch_size: int, payments: int, concurrency: int) -> Figures | None:
    with tempfile.TemporaryDirectory() as tmp:
        url = await _database_url(kind, Path(tmp))
        if url is None:
            return None
        try:
            return await _measure(kind, url, Path(tmp), rounds, batch_size, payments, concurrency)
        finally:
            await _drop(url)


async def _measure(
    kind: str, url: str, tmp: Path, rounds: int, batch_size: int, payments: int, concurrency: int
) -> Figures:
    # Auth enforced as in production: the clients carry their owners' tokens (tests/auth.py).
    issuer = await Issuer().start()
    settings = PaymentsSettings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp,
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
    servicer = app.registrations[0].servicer
    servicer.deps.risk = ApprovingRisk()
    await app.writer.prepare()
    app.writer.start()  # the outbox relay stays off: no notify here, and its retries would only add noise
    running = await create_server(settings, app.registrations)
    raw_engine = create_engine(url)
    await create_schema(raw_engine, _raw_metadata)
    try:
        async with acting_channel(f"127.0.0.1:{running.port}", issuer) as channel:
            stub = pb_grpc.PaymentsServiceStub(channel)
            wallets = await _funded_wallets(stub)
            # A batch moves money out of its caller's own accounts: an institution's payroll accounts.
            payroll = await _funded_wallets(stub, 20, owner="bench-payroll")
            batch = await _batch_rounds(stub, app.engine, raw_engine, payroll, wallets, rounds, batch_size)
        pay_rounds = max(2, rounds // 2)
        pay = await _payment_rounds(
            servicer, app.writer, raw_engine, wallets, pay_rounds, payments, concurrency, through_handler=False
        )
        # The handler path skips gRPC but not the guard: each call presents its payer's token.
        contexts = {wallet: _Context(bearer(issuer.customer(f"user-{i}"))) for i, wallet in enumerate(wallets)}
        handler = await _payment_rounds(
            servicer,
            app.writer,
            raw_engine,
            wallets,
            pay_rounds,
            payments,
            concurrency,
            through_handler=True,
            contexts=contexts,
        )
    finally:
        await running.server.stop(0)
        await app.writer.stop()
        await raw_engine.dispose()
        for authorizer in running.authorizers:
            await authorizer.close()
        await issuer.stop()
        await app.close()
    return Figures(
        kind,
        *batch,
        *pay[:3],
        handler_payments_per_s=handler[0],
        handler_payments_per_commit=handler[1],
        payments_cpu_us=pay[3],
        handler_cpu_us=handler[3],
    )


class _Context:
    """What the servicer guard reads from a gRPC context: the caller's metadata and remaining time."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> None:
        return None


async def _funded_wallets(stub: pb_grpc.PaymentsServiceAsyncStub, count: int = WALLETS, owner: str = "") -> list[str]:
    """`count` funded wallets, each of its own user (or all of `owner`'s)."""
    wallets = []
    for i in range(count):
        who = owner or f"user-{i}"
        opened = await stub.OpenAccount(
            pb.OpenAccountRequest(
                idempotency_key=f"open-{who}-{i}",
                owner_id=who,
                kind=pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                currency_code="CNY",
            )
        )
        wallets.append(opened.account.account_id)
        await stub.TopUp(
            pb.TopUpRequest(
                idempotency_key=f"fund-{who}-{i}", account_id=wallets[-1], channel="test_bank", amount=cny(10**12)
            )
        )
    return wallets


async def _batch_rounds(
    stub: pb_grpc.PaymentsServiceAsyncStub,
    engine: Any,
    raw_engine: Any,
    payroll: list[str],
    wallets: list[str],
    rounds: int,
    batch_size: int,
) -> tuple[float, float, float]:
    rng = random.Random(7)
    api, raw, rows_per_transfer = [], [], []
    for round_number in range(rounds + 1):
        specs = []
        for i in range(batch_size):
            source, destination = rng.choice(payroll), rng.choice(wallets)
            specs.append(
                pb.TransferSpec(
                    reference=f"r{i}",
                    from_account_id=source,
                    to_account_id=destination,
                    amount=cny(rng.randint(1, 10_000)),
                )
            )
        request = pb.BatchCreateTransfersRequest(idempotency_key=f"batch-{round_number}", transfers=specs)
        before = await _count_rows(engine)
        started = time.perf_counter()
        reply = await stub.BatchCreateTransfers(request, timeout=120)
        elapsed = time.perf_counter() - started
        assert reply.posted_count == batch_size, reply.refused_count
        written = await _count_rows(engine) - before
        raw_rate = await raw_batched_rows_per_second(raw_engine, written)
        if round_number == 0:
            continue  # warm-up: caches, prepared statements, first-touch pages
        api.append(batch_size / elapsed)
        raw.append(raw_rate)
        rows_per_transfer.append(written / batch_size)
    return statistics.median(api), statistics.median(rows_per_transfer), statistics.median(raw)


def ledger_payment(writer: LedgerWriter, request: pb.CreatePaymentRequest) -> Awaitable[Any]:
    """What CreatePayment hands the ledger writer once risk has approved: the write path alone."""
    payment = PaymentRequest(
        request.payer_account_id,
        request.payee_account_id,
        Money("CNY", request.amount.minor_units),
        CaptureMode.AUTOMATIC,
        "",
    )
    payment_id = str(uuid.uuid4())

    async def action(uow: Any) -> Any:
        return await usecase.create_payment(uow, payment_id, payment, APPROVED, LIMITS)

    return writer.submit(
        Command(
            method="CreatePayment",
            scope=ANONYMOUS,
            key=request.idempotency_key,
            fingerprint=request_fingerprint(request),
            response_type=pb.CreatePaymentResponse,
            action=action,
            render=lambda state: pb.CreatePaymentResponse(payment=convert.payment(state)),
            accounts=(payment.payer_account_id, payment.payee_account_id),
        )
    )


async def _payment_rounds(
    servicer: Any,
    writer: Any,
    raw_engine: Any,
    wallets: list[str],
    rounds: int,
    payments: int,
    concurrency: int,
    *,
    through_handler: bool,
    contexts: dict[str, Any] | None = None,
) -> tuple[float, float, float, float]:
    """Concurrent payments through the whole handler, or straight into the ledger writer: medians of
    payments/s, payments per commit, raw rows/s and this process's CPU microseconds per payment."""
    rng = random.Random(11 + through_handler)
    rates, per_commit, raw, cpu = [], [], [], []
    for round_number in range(rounds):
        requests = []
        for i in range(payments):
            payer, payee = rng.sample(wallets, 2)
            requests.append(
                pb.CreatePaymentRequest(
                    idempotency_key=f"pay-{through_handler}-{round_number}-{i}",
                    payer_account_id=payer,
                    payee_account_id=payee,
                    amount=cny(rng.randint(1, 10_000)),
                )
            )
        queue = list(reversed(requests))

        async def worker(queue: list[pb.CreatePaymentRequest]) -> None:
            while queue:
                request = queue.pop()
                if through_handler:
                    reply = await servicer.CreatePayment(request, (contexts or {}).get(request.payer_account_id))
                else:
                    reply = await ledger_payment(writer, request)
                assert reply.payment.status == pb.PAYMENT_STATUS_CAPTURED

        batches_before = writer.batches
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(queue) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu.append((time.process_time() - cpu_started) / payments * 1e6)
        rates.append(payments / elapsed)
        per_commit.append(payments / max(1, writer.batches - batches_before))
        raw.append(await raw_commit_per_row_per_second(raw_engine, min(payments, 500)))
    return statistics.median(rates), statistics.median(per_commit), statistics.median(raw), statistics.median(cpu)


def render(figures: list[Figures], command: str) -> str:
    lines = [
        "| database | batch API transfers/s | rows per transfer | raw batched rows/s | ratio, same rows "
        "| ratio, 1 row per transfer | concurrent payments/s | payments per commit | one-commit-per-row rows/s "
        "| ratio | through the handler: payments/s (ratio) | CPU µs per payment: writer / handler (ratio) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f.database} | {f.batch_transfers_per_s:,.0f} | {f.batch_rows_per_transfer:.2f} "
            f"| {f.raw_batched_rows_per_s:,.0f} | {f.batch_ratio_same_rows:.0%} | {f.batch_ratio_per_transfer:.0%} "
            f"| {f.payments_per_s:,.0f} | {f.payments_per_commit:.1f} | {f.raw_commit_rows_per_s:,.0f} "
            f"| {f.payments_ratio:.2f} | {f.handler_payments_per_s:,.0f} ({f.handler_ratio:.2f}) "
            f"| {f.payments_cpu_us:,.0f} / {f.handler_cpu_us:,.0f} ({f.handler_cpu_ratio:.2f}) |"
        )
    lines.append("")
    lines.append(f"Reproduce: `{command}`")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[Figures]:
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    found = []
    for kind in kinds:
        figures = await run_database(kind, args.rounds, args.batch_size, args.payments, args.concurrency)
        if figures is not None:
            found.append(figures)
            print(
                f"{kind}: batch {figures.batch_transfers_per_s:,.0f} transfers/s "
                f"({figures.batch_ratio_same_rows:.0%} of raw for the same rows); "
                f"payments {figures.payments_per_s:,.0f}/s ({figures.payments_ratio:.2f}x one-commit-per-row)",
                flush=True,
            )
    return found


def main(argv: list[str] | None = None) -> int:
    # The service logs one info line per payment; a benchmark's terminal would measure itself.
    configure_logging("payments-bench", level="warning")
    parser = argparse.ArgumentParser(
        prog="python -m bench.ledger", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--payments", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    figures = asyncio.run(main_async(args))
    print()
    print(render(figures, "python -m bench.ledger " + " ".join(argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
