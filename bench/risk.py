"""Risk assessment cost: AssessPayment beside a no-op RPC (health Check) on the same server, same run.

`python -m bench.risk [--rounds N] [--seconds S] [--concurrency C] [--databases sqlite,postgres]
[--without-database]`

One in-process risk server per database kind, configured as in production
(tracing interceptor on, info-level JSON logs rendered, to /dev/null here).
Each round runs the no-op and AssessPayment closed loops back to back, in
alternating order so machine drift hits both alike. Payments come from a
pool of 10,000 payers, devices and IPs, so velocity and device lookups touch
real rows. Reported: medians over rounds of throughput and p50/p99, and the
ratios AssessPayment / no-op; CPU per call of each, this process's plus
that of the local PostgreSQL backends serving the benchmark database (far
steadier than rates on a shared machine), and how many assessments each
write transaction carried (group commit).
--without-database answers every assessment with a canned approval: the
request path's cost alone, the floor database work adds to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.load import Round, closed_loop, median
from finmesh.common.v1 import money_pb2
from finmesh.platform.observability.logs import configure_logging
from finmesh.platform.runner import start_app
from finmesh.risk import app as risk_app
from finmesh.risk.config import RiskSettings
from finmesh.risk.v1 import risk_service_pb2 as pb
from finmesh.risk.v1 import risk_service_pb2_grpc as pb_grpc
from tests.auth import Issuer, bearer

PG = {
    "host": os.environ.get("FINMESH_TEST_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("FINMESH_TEST_PG_PORT", "5432")),
    "user": os.environ.get("FINMESH_TEST_PG_USER", "postgres"),
}
POOL = 10_000


def _request() -> pb.AssessPaymentRequest:
    n = random.randrange(POOL)
    return pb.AssessPaymentRequest(
        payment_id=uuid.uuid4().hex,
        payer_user_id=f"bench-user-{n}",
        payer_account_id=f"bench-acct-{n}",
        payee_account_id="bench-merchant",
        amount=money_pb2.Money(currency_code="CNY", minor_units=random.randint(100, 200_000)),
        device_id=f"bench-device-{n}",
        ip_address=f"10.{n // 256 % 256}.{n % 256}.7",
        ip_country="CN",
        home_country="CN",
        payer_tier=pb.RISK_TIER_LOW,
    )


async def _postgres_url() -> tuple[str, str] | None:
    """A fresh database on the local PostgreSQL, or None when it is not reachable."""
    try:
        admin = await asyncpg.connect(database="postgres", timeout=3, **PG)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    name = f"fmbench_risk_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{name}", name


async def _drop(name: str) -> None:
    admin = await asyncpg.connect(database="postgres", timeout=3, **PG)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _canned(engine: object, rules: object, batch: list[Any], now: datetime, traces: object) -> list[Any]:
    """An approval for every payment without touching the database: what the request path costs alone."""
    # imported here: the bench also measures builds before the writer
    from finmesh.risk.usecases.assessing import Outcome

    return [
        Outcome(
            SimpleNamespace(
                assessment_id=str(uuid.uuid4()),
                payment_id=f.payment_id,
                score=0,
                decision="APPROVE",
                warning_level="LOW",
                reasons=[],
                rules_version="canned",
                created_at=now,
            )
        )
        for f in batch
    ]


def _batches(app: object) -> int | None:
    """Write transactions so far (None for a build without the assessment writer, such as the code before it)."""
    writer = getattr(app, "writer", None)
    return None if writer is None else writer.batches


async def _server_cpu(url: str) -> float:
    """CPU seconds used so far by the local PostgreSQL backends connected to this benchmark's database (0 on
    SQLite). Backends that exit between two readings take their CPU with them: the pool keeps its connections."""
    if not url.startswith("postgresql"):
        return 0.0
    admin = await asyncpg.connect(database="postgres", timeout=3, **PG)
    try:
        pids = [
            r["pid"]
            for r in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", url.rsplit("/", 1)[1])
        ]
    finally:
        await admin.close()
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


async def measure(
    url: str,
    tmp: Path,
    rounds: int,
    seconds: float,
    concurrency: int,
    extra: dict[str, list[float]],
    without_database: bool = False,
) -> dict[str, list[Round]]:
    # Auth enforced as in production: payments' service token on every AssessPayment (tests/auth.py's issuer
    # stands in for identity; a verified token is cached, so this is the steady-state cost).
    issuer = await Issuer().start()
    settings = RiskSettings(
        host="127.0.0.1",
        port=0,
        database_url=url,
        data_dir=tmp,
        shutdown_grace_seconds=0.5,
        service_name="risk",
        **issuer.settings(),
    )
    app = await risk_app.build(settings)
    if without_database:
        from finmesh.risk.usecases.assessment_writer import AssessmentWriter

        app.writer = AssessmentWriter(app.engine, lambda: app.rules.active.rules, assess=_canned)
        app.registrations[0].servicer.writer = app.writer
    running = await start_app(app, settings)
    results: dict[str, list[Round]] = {"noop": [], "assess": []}
    payments_token = bearer(issuer.service("payments"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            risk = pb_grpc.RiskServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            calls = {
                "noop": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
                "assess": lambda: risk.AssessPayment(_request(), timeout=10, metadata=payments_token),
            }
            for call in calls.values():  # warm-up: connections, caches, first rows
                await closed_loop(call, concurrency=concurrency, seconds=1.0)
            for i in range(rounds):
                for mode in ("noop", "assess") if i % 2 == 0 else ("assess", "noop"):
                    batches, cpu, server_cpu = _batches(app), time.process_time(), await _server_cpu(url)
                    r = await closed_loop(calls[mode], concurrency=concurrency, seconds=seconds)
                    results[mode].append(r)
                    # CPU per call of this process (client, server, SQLite's thread) and of the PostgreSQL
                    # backends serving its database: steadier than rates on a shared machine.
                    cpu = (time.process_time() - cpu) + (await _server_cpu(url) - server_cpu)
                    extra[f"cpu_{mode}"].append(cpu * 1000 / max(1, r.calls))
                    batched = ""
                    if mode == "assess" and batches is not None:
                        extra["batch"].append(r.calls / max(1, (_batches(app) or 0) - batches))
                        batched = f"  {extra['batch'][-1]:5.1f} per transaction"
                    print(
                        f"  round {i + 1} {mode:>6}: {r.rate:8.0f} calls/s  p50 {r.percentile(50):7.2f} ms"
                        f"  p99 {r.percentile(99):7.2f} ms  errors {r.errors}  cpu {extra[f'cpu_{mode}'][-1]:.3f} ms"
                        f"/call{batched}",
                        flush=True,
                    )
    finally:
        await running.server.stop(0)
        await app.close()
        for authorizer in running.authorizers:
            await authorizer.close()
        await issuer.stop()
    return results


def report(kind: str, results: dict[str, list[Round]], concurrency: int, extra: dict[str, list[float]]) -> None:
    figures = {}
    for mode, rounds in results.items():
        figures[mode] = (
            median([r.rate for r in rounds]),
            median([r.percentile(50) for r in rounds]),
            median([r.percentile(99) for r in rounds]),
            sum(r.errors for r in rounds),
        )
    print(f"\nrisk on {kind}, closed loop, concurrency {concurrency}, medians of {len(results['noop'])} rounds")
    names = {"noop": "no-op (health Check)", "assess": "AssessPayment"}
    for mode, (rate, p50, p99, errors) in figures.items():
        print(f"  {names[mode]:<22} {rate:8.0f} calls/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}")
    (a_rate, _, a_p99, _), (n_rate, _, n_p99, _) = figures["assess"], figures["noop"]
    print(f"  AssessPayment / no-op: throughput {a_rate / n_rate:.3f}x, p99 latency {a_p99 / n_p99:.1f}x")
    cpu_noop, cpu_assess = median(extra["cpu_noop"]), median(extra["cpu_assess"])
    print(
        f"  CPU per call (this process + its PostgreSQL backends): no-op {cpu_noop:.3f} ms, "
        f"AssessPayment {cpu_assess:.3f} ms ({cpu_assess / cpu_noop:.1f}x)"
    )
    if extra["batch"]:
        print(f"  assessments per write transaction (group commit): median {median(extra['batch']):.1f}")


async def run(kinds: list[str], rounds: int, seconds: float, concurrency: int, without_database: bool) -> None:
    # As in production: info-level JSON lines rendered (to /dev/null, so the terminal is not the bottleneck).
    configure_logging("risk", level="info", version="bench", color="bench", stream=open(os.devnull, "w"))  # noqa: SIM115
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "sqlite":
                url, drop = f"sqlite+aiosqlite:///{Path(tmp) / 'risk.db'}", None
            else:
                made = await _postgres_url()
                if made is None:
                    print(f"== postgres at {PG['host']}:{PG['port']} unreachable: skipped")
                    continue
                url, drop = made
            print(f"== risk on {kind}", flush=True)
            extra: dict[str, list[float]] = {"batch": [], "cpu_noop": [], "cpu_assess": []}
            try:
                results = await measure(url, Path(tmp), rounds, seconds, concurrency, extra, without_database)
            finally:
                if drop:
                    await _drop(drop)
            report(
                kind + (" (database work replaced by a canned approval)" if without_database else ""),
                results,
                concurrency,
                extra,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument(
        "--without-database",
        action="store_true",
        help="answer every assessment with a canned approval: the cost of the request path alone",
    )
    args = parser.parse_args()
    asyncio.run(
        run(
            [k.strip() for k in args.databases.split(",") if k.strip()],
            args.rounds,
            args.seconds,
            args.concurrency,
            args.without_database,
        )
    )


if __name__ == "__main__":
    main()
