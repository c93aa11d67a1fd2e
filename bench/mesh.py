"""The payment path end to end, beside the no-op chain with the same hops, measured in the same run.

    python -m bench.mesh [--seconds 5] [--rounds 3] [--concurrency 48] [--db sqlite|postgres] [--quick]

Real: client → payments → risk → durable commit (notify fed asynchronously by the
outbox), the four services and the fakes as processes (`finmesh up`'s Mesh), auth
enforced, users onboarded through identity like the demo's. No-op: the same two
hops with empty handlers on the same server stack (finmesh.load.noop). Figures:

a) closed-loop throughput, real vs no-op, both at 100% trace sampling (ratio);
b) p99 in open loop at 70% of the real path's measured maximum, for both;
c) tracing overhead on the real path: tracing on vs FINMESH_TRACING_ENABLED=false (metrics on in every set-up,
   the no-op chain's included; what they cost: bench.metrics);
d) cold start, spawn → SERVING per service (the runner's port line, printed once health says SERVING);
e) resident memory per service process, idle and under load (VmRSS);
f) throughput with 1-3 replicas of payments and risk (PostgreSQL when it answers: SQLite replicas contend for
   one file lock), beside the no-op chain with the same replicas.

Rounds alternate between the set-ups and medians are printed. The payers are
dedicated, onboarded bench users whose accounts payments is configured to treat as
test accounts (FINMESH_SYNTHETIC_OWNER_IDS; risk keeps them out of AML and
indicators), and the calls carry `baggage: synthetic=true`. Tier limits, per-caller
rate limits and risk's velocity counts are lifted for the run so that they do not
refuse or hold the load (all are still evaluated on every call). Never passes or
fails on a time; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc

from finmesh.cli.mesh import SERVICES, Mesh, fake_env, free_port
from finmesh.cli.slice import run_slice
from finmesh.common.v1 import money_pb2
from finmesh.load.engine import LoadResult, closed_loop, open_loop
from finmesh.load.noop import NoopMesh, multi_target
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.risk.config import DEFAULT_RULES_FILE

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
UNLIMITED = {
    tier: {"CNY": {"single": 10**15, "daily_amount": 10**17, "daily_count": 10**9}}
    for tier in ("low", "medium", "high")
}
# The payers are funded with one large top-up each, past the channels' default caps.
NO_CHANNEL_CAPS = {"*": {"CNY": {"top_up": 10**15, "payout": 10**15}}}
BASE_ENV = {
    "FINMESH_TIER_LIMITS": json.dumps(UNLIMITED),
    "FINMESH_CHANNEL_CAPS": json.dumps(NO_CHANNEL_CAPS),
    "FINMESH_IDENTITY_ACCESS_TOKEN_TTL_SECONDS": "3600",  # the payers' tokens outlive the run
    "FINMESH_DRAIN_DELAY_SECONDS": "0",
    "FINMESH_SHUTDOWN_GRACE_SECONDS": "1",
    "FINMESH_LOG_LEVEL": "WARNING",
    # A handful of bench callers would hit the per-caller rate limit (it stops a runaway client); lifted so
    # high that the limiter still runs its bookkeeping on every call but never refuses one.
    "FINMESH_RATE_LIMIT_PER_CALLER_RPS": "1000000",
    "FINMESH_RATE_LIMIT_PER_CALLER_BURST": "1000000",
    "FINMESH_RATE_LIMIT_PER_SERVICE_RPS": "1000000",
    "FINMESH_RATE_LIMIT_PER_SERVICE_BURST": "1000000",
}
CHANNELS = 2  # client connections per target


# --- set-ups --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payer:
    account: str
    payee: str
    metadata: tuple[tuple[str, str], ...] = field(repr=False)


async def _pg_databases(run: str) -> dict[str, str]:
    admin = await asyncpg.connect(database="postgres", timeout=5, **PG)
    try:
        urls = {}
        for name in SERVICES:
            db = f"bench_mesh_{run}_{name}"
            await admin.execute(f'CREATE DATABASE "{db}"')
            urls[name] = f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
        return urls
    finally:
        await admin.close()


async def _drop_pg(urls: dict[str, str]) -> None:
    admin = await asyncpg.connect(database="postgres", timeout=5, **PG)
    try:
        for url in urls.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


async def postgres_answers() -> bool:
    try:
        await (await asyncpg.connect(database="postgres", timeout=3, **PG)).close()
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


@dataclass
class RealMesh:
    """The four services as processes, with funded bench payers; replicas of payments and risk on demand."""

    label: str
    tracing: bool
    db: str
    metrics: bool = True
    # More environment for every service (bench.events: the events transport).
    extra_env: dict[str, str] = field(default_factory=dict)
    payers: list[Payer] = field(default_factory=list)
    mesh: Mesh | None = None
    replicas: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=lambda: {"payments": [], "risk": []})
    replica_targets: dict[str, list[str]] = field(default_factory=lambda: {"payments": [], "risk": []})
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _pg_urls: dict[str, str] = field(default_factory=dict)

    async def start(self, payers: int) -> RealMesh:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"finmesh-bench-{self.label}-")
        if self.db == "postgres":
            self._pg_urls = await _pg_databases(uuid.uuid4().hex[:8])
        env = {
            **BASE_ENV,
            "FINMESH_TRACING_ENABLED": "true" if self.tracing else "false",
            "FINMESH_METRICS_ENABLED": "true" if self.metrics else "false",
            "FINMESH_RISK_RULES_FILE": str(_velocity_lifted_rules(Path(self._tmp.name))),
            **self.extra_env,
        }
        self.mesh = Mesh(Path(self._tmp.name), database_urls=self._pg_urls, extra_env=env)
        await asyncio.to_thread(self.mesh.start, 60)
        targets = self.mesh.targets()
        owners = []
        for _ in range(payers):
            result = await run_slice(targets, self.mesh.fakes["sms"], top_up=10**12, pay=1)
            token = result.tokens[result.payer_user_id]
            self.payers.append(
                Payer(
                    result.payer_account_id,
                    result.payee_account_id,
                    (("authorization", f"Bearer {token}"), ("baggage", "synthetic=true")),
                )
            )
            owners += [result.payer_user_id, result.payee_user_id]
        # Payments treats accounts as test accounts by their owners, from its configuration: restart it with them.
        self.mesh.extra_env["FINMESH_SYNTHETIC_OWNER_IDS"] = json.dumps(owners)
        await asyncio.to_thread(self.restart, "payments")
        return self

    @property
    def target(self) -> str:
        assert self.mesh is not None
        return multi_target([self.mesh.processes["payments"].target, *self.replica_targets["payments"]])

    async def backend_pids(self) -> list[int]:
        """The PostgreSQL backends connected to this mesh's databases (the pools keep them for the run)."""
        names = [url.rsplit("/", 1)[1] for url in self._pg_urls.values()]
        admin = await asyncpg.connect(database="postgres", timeout=5, **PG)
        try:
            rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])", names)
        finally:
            await admin.close()
        return [int(row["pid"]) for row in rows]

    def pids(self) -> dict[str, int]:
        assert self.mesh is not None
        return {name: p.process.pid for name, p in self.mesh.processes.items()}

    def _service_env(self) -> dict[str, str]:
        assert self.mesh is not None
        env = {f"FINMESH_{n.upper()}_TARGET": p.target for n, p in self.mesh.processes.items()}
        env.update(fake_env(self.mesh.fakes))  # identity reads the registry's, notify the SMS provider's
        risks = [self.mesh.processes["risk"].target, *self.replica_targets["risk"]]
        env["FINMESH_RISK_TARGET"] = multi_target(risks)
        return env

    def restart(self, name: str) -> float:
        """Stop one service and start it again; seconds from spawn to SERVING (of a second try if the first
        start failed: on a shared machine a start can fail for reasons of its own, e.g. the database's
        connection limit, and the rest of the run needs the service)."""
        assert self.mesh is not None
        old = self.mesh.processes[name]
        old.process.terminate()
        old.process.wait(15)
        try:
            return self._spawn_serving(name, old.port, primary=True)
        except RuntimeError as error:
            print(f"  {error}; starting it again", flush=True)
            return self._spawn_serving(name, old.port, primary=True)

    def _spawn_serving(self, name: str, port: int, *, primary: bool, index: int = 0) -> float:
        """Spawn a service like Mesh.start_one (stdout piped for the runner's port line) and time it to SERVING."""
        assert self.mesh is not None
        suffix = "" if primary else f"-{index}"
        env = {
            **os.environ,
            **self._service_env(),
            "FINMESH_PORT": str(port),
            "FINMESH_DATA_DIR": str(self.mesh.data_dir),
            "FINMESH_SPAN_FILE": str(self.mesh.span_dir / f"{name}{suffix}.jsonl"),
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            **self.mesh.extra_env,
        }
        if name in self.mesh.database_urls:
            env["FINMESH_DATABASE_URL"] = self.mesh.database_urls[name]
        started = time.monotonic()
        with (self.mesh.log_dir / f"{name}{suffix}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"finmesh.{name}.main"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        seconds = _wait_port_line(process, name, started, self.mesh.log_dir / f"{name}{suffix}.log")
        if primary:
            self.mesh.processes[name].process = process
        else:
            self.replicas[name].append(process)
            self.replica_targets[name].append(f"127.0.0.1:{port}")
        return seconds

    def set_replicas(self, payments: int, risk: int) -> None:
        """Run `payments` and `risk` processes of each (the primary plus extras); payments learn every risk."""
        self._stop_replicas()
        for i in range(risk - 1):
            self._spawn_serving("risk", free_port(), primary=False, index=i + 1)
        self.restart("payments")  # its risk target now names every risk process
        for i in range(payments - 1):
            self._spawn_serving("payments", free_port(), primary=False, index=i + 1)

    def _stop_replicas(self) -> None:
        for name in ("payments", "risk"):
            for process in self.replicas[name]:
                process.terminate()
            for process in self.replicas[name]:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if process.stdout is not None:
                    process.stdout.close()
            self.replicas[name].clear()
            self.replica_targets[name].clear()

    async def stop(self) -> None:
        self._stop_replicas()
        if self.mesh is not None:
            await asyncio.to_thread(self.mesh.stop)
            for proc in self.mesh.processes.values():
                if proc.process.stdout is not None:
                    proc.process.stdout.close()
            self.mesh = None
        if self._pg_urls:
            await _drop_pg(self._pg_urls)
            self._pg_urls = {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _velocity_lifted_rules(data_dir: Path) -> Path:
    """Risk's packaged rules with the count limits of velocity lifted: a bench payer pays thousands of times a
    minute, and past 20 per 10 minutes every payment would be held for review (still scored by every rule)."""
    text = DEFAULT_RULES_FILE.read_text(encoding="utf-8")
    text = re.sub(r"max_count: \d+", "max_count: 1000000000", text)
    text = re.sub(r"^version: .*$", 'version: "bench-velocity-lifted"', text, count=1, flags=re.MULTILINE)
    path = data_dir / "bench-rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _wait_port_line(process: subprocess.Popen[bytes], name: str, started: float, log: Path) -> float:
    """The runner prints {"service", "port"} once its health reports SERVING; EOF means it died."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        code = process.wait(15)
        last = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise RuntimeError(f"{name} exited with {code} before serving ({last[0][:300] if last else 'no log'})")
    json.loads(line)
    return time.monotonic() - started


# --- load -----------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Something to send payments to: its address, who pays whom, and the client's channels."""

    name: str
    address: str
    payers: list[Payer]
    pids: Callable[[], dict[str, int]]
    # PostgreSQL server processes serving this target's databases (their CPU is part of a payment's).
    server_pids: Callable[[], Awaitable[list[int]]] | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def open(self) -> None:
        # One subchannel pool per channel, so CHANNELS channels are CHANNELS connections; round robin over replicas.
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.lb_policy_name", "round_robin")]
        self.channels = [grpc.aio.insecure_channel(self.address, options=options) for _ in range(CHANNELS)]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels = []

    def call(self, round_id: str) -> Callable[[int], Awaitable[None]]:
        stubs = [pb_grpc.PaymentsServiceStub(c) for c in self.channels]
        amount = money_pb2.Money(currency_code="CNY", minor_units=1)

        async def pay(i: int) -> None:
            payer = self.payers[i % len(self.payers)]
            reply = await stubs[i % len(stubs)].CreatePayment(
                pb.CreatePaymentRequest(
                    idempotency_key=f"bench-{round_id}-{i}",
                    payer_account_id=payer.account,
                    payee_account_id=payer.payee,
                    amount=amount,
                    capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
                    description="bench",
                ),
                metadata=payer.metadata,
                timeout=10,
            )
            self.statuses[pb.PaymentStatus.Name(reply.payment.status)] += 1

        return pay


class ProcessSampler:
    """While a round runs: peak VmRSS per process (sampled twice a second in a thread) and the CPU time each
    process, and this load-generating client, used over the round."""

    def __init__(self, pids: dict[str, int], server_pids: list[int] | None = None) -> None:
        self.pids = pids
        self.server_pids = server_pids or []
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.cpu_s: dict[str, float] = {}
        self._cpu_before: dict[str, float] = {}
        self._server_before: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_kib(pid))

    def _cpu(self) -> dict[str, float]:
        times = os.times()
        return {**{name: cpu_seconds(pid) for name, pid in self.pids.items()}, "client": times.user + times.system}

    def __enter__(self) -> ProcessSampler:
        self._cpu_before = self._cpu()
        self._server_before = {pid: cpu_seconds(pid) for pid in self.server_pids}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        after = self._cpu()
        self.cpu_s = {name: after[name] - self._cpu_before[name] for name in after}
        if self.server_pids:
            # A backend that exited meanwhile reads 0: its last stretch is lost rather than counted negative.
            self.cpu_s["postgres"] = sum(
                max(0.0, cpu_seconds(pid) - before) for pid, before in self._server_before.items()
            )


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """Per process: peak RSS (KiB) and CPU ms per answered payment, one entry per round."""

    rss: dict[str, list[int]] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)

    def add(self, sampler: ProcessSampler, payments: int) -> None:
        for name, kib in sampler.peak.items():
            self.rss.setdefault(name, []).append(kib)
        for name, seconds in sampler.cpu_s.items():
            self.cpu_ms.setdefault(name, []).append(1000 * seconds / max(payments, 1))


async def closed_round(
    target: Target, concurrency: int, seconds: float, warmup: float, usage: Usage | None = None
) -> LoadResult:
    target.open()
    answered = sum(target.statuses.values())
    try:
        server_pids = await target.server_pids() if target.server_pids is not None else None
        with ProcessSampler(target.pids(), server_pids) as sampler:
            result = await closed_loop(
                target.call(uuid.uuid4().hex[:10]), concurrency=concurrency, duration_s=seconds, warmup_s=warmup
            )
    finally:
        await target.close()
    if usage is not None:
        usage.add(sampler, sum(target.statuses.values()) - answered)  # warm-up included, as in the CPU time
    return result


async def open_round(target: Target, rate: float, seconds: float, warmup: float) -> LoadResult:
    target.open()
    try:
        return await open_loop(
            target.call(uuid.uuid4().hex[:10]), rate=rate, duration_s=seconds, warmup_s=warmup, max_in_flight=2000
        )
    finally:
        await target.close()


async def settle(quiet_share: float = 0.05, longest: float = 5.0) -> None:
    """Wait (at most `longest` s) until the machine is idle: while a mesh still catches up on the work its round
    left it, the next round would measure that contention instead of its own cost."""
    deadline = time.monotonic() + longest
    cores = os.cpu_count() or 1
    while time.monotonic() < deadline:
        before = _busy_seconds()
        await asyncio.sleep(0.25)
        if (_busy_seconds() - before) / (0.25 * cores) < quiet_share:
            return


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (/proc/stat: user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy / os.sysconf("SC_CLK_TCK")


# --- report ---------------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _errors(results: list[LoadResult]) -> str:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r.errors)
    return ", ".join(f"{k} {v}" for k, v in total.most_common()) or "none"


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


@dataclass
class Args:
    seconds: float
    rounds: int
    concurrency: int
    warmup: float
    db: str
    payers: int
    starts: int
    replicas: list[tuple[int, int]]


async def measure(args: Args) -> None:
    print(f"load average at start: {load_average()}  (cores: {os.cpu_count()})", flush=True)
    pg = await postgres_answers()
    if args.db == "postgres" and not pg:
        raise SystemExit("--db postgres: nothing answers on 127.0.0.1:5432")
    real_on, real_off = RealMesh("traced", True, args.db), RealMesh("untraced", False, args.db)
    noop_on, noop_off = NoopMesh(tracing=True, extra_env=BASE_ENV), NoopMesh(tracing=False, extra_env=BASE_ENV)
    replica_mesh: RealMesh | None = None
    try:
        t = time.monotonic()
        await asyncio.gather(real_on.start(args.payers), real_off.start(args.payers))
        for noop in (noop_on, noop_off):
            await noop.__aenter__()
        print(
            f"set up in {time.monotonic() - t:.0f} s ({args.payers} onboarded payers per mesh, {args.db})", flush=True
        )
        targets = {
            "real traced": Target(
                "real traced",
                real_on.target,
                real_on.payers,
                real_on.pids,
                real_on.backend_pids if args.db == "postgres" else None,
            ),
            "no-op traced": Target(
                "no-op traced", noop_on.target, [Payer("a", "b", noop_on.metadata())], lambda: noop_pids(noop_on)
            ),
            "real untraced": Target(
                "real untraced",
                real_off.target,
                real_off.payers,
                real_off.pids,
                real_off.backend_pids if args.db == "postgres" else None,
            ),
            "no-op untraced": Target(
                "no-op untraced", noop_off.target, [Payer("a", "b", noop_off.metadata())], lambda: noop_pids(noop_off)
            ),
        }
        await asyncio.sleep(2)
        idle = {name: rss_kib(pid) for name, pid in {**real_on.pids(), **noop_pids(noop_on)}.items()}
        real_max = await closed_phase(args, targets, idle)
        await open_phase(args, targets, round(0.7 * real_max, 1))
        await cold_start_phase(args, real_on)
        if args.replicas:
            await real_off.stop()
            replica_db = "postgres" if pg else "sqlite"
            replica_mesh = (
                real_on if replica_db == args.db else await RealMesh("replicas", True, replica_db).start(args.payers)
            )
            await replica_phase(args, replica_mesh)
    finally:
        for mesh in (real_on, real_off, replica_mesh):
            if mesh is not None:
                await mesh.stop()
        for noop in (noop_on, noop_off):
            await noop.__aexit__(None, None, None)
        print(f"\nload average at end: {load_average()}")


async def closed_phase(args: Args, targets: dict[str, Target], idle: dict[str, int]) -> float:
    """a, c, e: closed loop, rounds rotating over the four set-ups. Returns the real path's median rate."""
    closed: dict[str, list[LoadResult]] = {name: [] for name in targets}
    usage = {name: Usage() for name in targets}
    for r in range(args.rounds):
        order = list(targets.values())
        order = order[r % len(order) :] + order[: r % len(order)]
        # Every other round backwards: a real mesh's round leaves work behind (its outbox relay and notify catch
        # up for a second or two), so a fixed successor would always run against that and look dearer.
        if r % 2:
            order.reverse()
        for target in order:
            await settle()
            closed[target.name].append(
                await closed_round(target, args.concurrency, args.seconds, args.warmup, usage[target.name])
            )
        print(
            f"closed-loop round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {closed[n][-1].throughput:.0f}/s" for n in targets)
            + f"; load {load_average()}; errors "
            + _errors([closed[n][-1] for n in targets]),
            flush=True,
        )
    rate = {n: med([x.throughput for x in rs]) for n, rs in closed.items()}
    print()
    print(
        f"closed loop, {args.concurrency} concurrent, {args.rounds} x {args.seconds:g} s rounds (medians), "
        f"db {args.db}:"
    )
    print(f"  {'set-up':<16}{'payments/s':>11}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}  errors")
    for name, results in closed.items():
        base = rate[name.replace("real", "no-op")] if name.startswith("real") else rate[name]
        p50 = med([x.percentile_ms(50) for x in results])
        p99 = med([x.percentile_ms(99) for x in results])
        print(f"  {name:<16}{rate[name]:>11.0f}{rate[name] / base:>8.2f}{p50:>9.1f}{p99:>9.1f}  {_errors(results)}")
    print(f"  (a) real / no-op, both traced (100% sampling): {rate['real traced'] / rate['no-op traced']:.2f}")
    print(
        f"  (c) tracing overhead on the real path: {1 - rate['real traced'] / rate['real untraced']:.0%} of "
        f"throughput; on the no-op chain: {1 - rate['no-op traced'] / rate['no-op untraced']:.0%}"
    )
    print(f"  payment outcomes (real traced): {dict(targets['real traced'].statuses)}")
    _print_cpu(usage)
    print()
    print("(e) resident memory, MiB: idle, and peak under load (median over the closed-loop rounds):")
    for name, kib in idle.items():
        under = usage["real traced"].rss.get(name) or usage["no-op traced"].rss.get(name, [])
        loaded = _mib(med([float(v) for v in under])) if under else "-"
        print(f"  {name:<16}idle {_mib(kib):>5}   under load {loaded:>5}", flush=True)
    return rate["real traced"]


def _print_cpu(usage: dict[str, Usage]) -> None:
    print()
    print(
        "CPU time per answered payment, ms, by process (median over the closed-loop rounds; client = this bench;"
        " postgres = the server's backends for the mesh's databases):"
    )
    total = {name: sum(med(ms) for ms in used.cpu_ms.values()) for name, used in usage.items()}
    cores = os.cpu_count() or 1
    for name, used in usage.items():
        ceiling = 1000 * cores / total[name]
        print(
            f"  {name:<16}"
            + "  ".join(f"{process} {med(ms):.2f}" for process, ms in used.cpu_ms.items())
            + f"  = {total[name]:.2f}  (all {cores} cores on it alone: at most {ceiling:.0f}/s)"
        )
    print(
        f"  CPU ratio no-op / real, both traced: {total['no-op traced'] / total['real traced']:.2f};  tracing's "
        f"CPU per payment: real +{total['real traced'] - total['real untraced']:.2f} ms "
        f"({1 - total['real untraced'] / total['real traced']:.0%}), no-op "
        f"+{total['no-op traced'] - total['no-op untraced']:.2f} ms"
    )


async def open_phase(args: Args, targets: dict[str, Target], rate: float) -> None:
    """b: open loop at 70% of the real path's maximum, real and no-op at that same rate."""
    opened: dict[str, list[LoadResult]] = {"real traced": [], "no-op traced": []}
    for r in range(args.rounds):
        names = ["real traced", "no-op traced"] if r % 2 == 0 else ["no-op traced", "real traced"]
        for name in names:
            opened[name].append(await open_round(targets[name], rate, args.seconds, args.warmup))
    print()
    print(f"(b) open loop at {rate:.0f}/s (70% of the real path's maximum), {args.rounds} rounds (medians):")
    for name, results in opened.items():
        print(
            f"  {name:<16}p50 {med([x.percentile_ms(50) for x in results]):.1f} ms  "
            f"p99 {med([x.percentile_ms(99) for x in results]):.1f} ms  "
            f"late sends {sum(x.late_sends for x in results)}  errors {_errors(results)}",
            flush=True,
        )


async def cold_start_phase(args: Args, mesh: RealMesh) -> None:
    """d: the traced real mesh's services restarted one at a time; no-op stand-ins started beside them."""
    starts: dict[str, list[float]] = {name: [] for name in SERVICES}
    noop_starts: dict[str, list[float]] = {"payments": [], "risk": []}
    for _ in range(args.starts):
        for name in SERVICES:
            starts[name].append(await asyncio.to_thread(mesh.restart, name))
        fresh = await asyncio.to_thread(NoopMesh(tracing=True, extra_env=BASE_ENV).start)
        for proc in fresh.processes:
            noop_starts[proc.role].append(proc.serving_after)
        await asyncio.to_thread(fresh.stop)
    print()
    print(f"(d) cold start, spawn -> SERVING, median of {args.starts} (traced, {args.db}):")
    for name, values in starts.items():
        print(f"  {name:<10}{med(values):.2f} s   [{', '.join(f'{v:.2f}' for v in values)}]")
    for role, values in noop_starts.items():
        print(f"  no-op {role:<10}{med(values):.2f} s", flush=True)


async def replica_phase(args: Args, mesh: RealMesh) -> None:
    """f: 1-3 processes of payments and of risk, beside the no-op chain with as many stand-ins."""
    scaling: list[tuple[int, int, float, float]] = []
    for payments, risk in args.replicas:
        await asyncio.to_thread(mesh.set_replicas, payments, risk)
        real = Target("real", mesh.target, mesh.payers, mesh.pids)
        with NoopMesh(tracing=True, payments=payments, risk=risk, extra_env=BASE_ENV) as noop:
            baseline = Target("no-op", noop.target, [Payer("a", "b", noop.metadata())], lambda: {})
            real_rates, noop_rates = [], []
            for _ in range(2):  # one alternation of real and no-op per round; two rounds keep the run short
                real_rates.append((await closed_round(real, args.concurrency, args.seconds, args.warmup)).throughput)
                noop_rates.append(
                    (await closed_round(baseline, args.concurrency, args.seconds, args.warmup)).throughput
                )
        scaling.append((payments, risk, med(real_rates), med(noop_rates)))
        print(
            f"replicas payments {payments} risk {risk}: real {scaling[-1][2]:.0f}/s, "
            f"no-op {scaling[-1][3]:.0f}/s; load {load_average()}",
            flush=True,
        )
    print()
    print(f"(f) replicas, closed loop {args.concurrency} concurrent, real on {mesh.db}:")
    one_real, one_noop = scaling[0][2], scaling[0][3]
    for payments, risk, real_rate, noop_rate in scaling:
        print(
            f"  payments x{payments} risk x{risk}: real {real_rate:.0f}/s ({real_rate / one_real:.2f}x), "
            f"no-op {noop_rate:.0f}/s ({noop_rate / one_noop:.2f}x), real/no-op {real_rate / noop_rate:.2f}"
        )


def noop_pids(mesh: NoopMesh) -> dict[str, int]:
    return {f"noop-{p.role}": p.process.pid for p in mesh.processes}


def _pair(text: str) -> tuple[int, int]:
    payments, risk = text.split("x")
    return int(payments), int(risk)


def parse(argv: list[str] | None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--starts", type=int, default=3, help="cold starts per service")
    parser.add_argument("--replicas", default="1x1,2x1,1x2,2x2,3x3", help="payments x risk process counts; empty: skip")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s, 1 cold start, replicas 1x1,2x2")
    a = parser.parse_args(argv)
    if a.quick:
        a.seconds, a.rounds, a.starts, a.replicas = 3.0, 2, 1, "1x1,2x2" if a.replicas else ""
    replicas = [_pair(pair) for pair in a.replicas.split(",") if pair]
    return Args(a.seconds, a.rounds, a.concurrency, warmup=1.0, db=a.db, payers=3, starts=a.starts, replicas=replicas)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(measure(parse(argv)))


if __name__ == "__main__":
    main()
