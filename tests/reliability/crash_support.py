"""Helpers for the reliability tests: services as killable processes, a retrying payment load, the books audit.

The audit reads the databases directly (read-only) and returns what it found
wrong as lists, so a test's assertion message names the offending rows and
the figures it prints come from the same pass.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
from sqlalchemy import text
from sqlalchemy.engine import make_url

from finmesh.cli.mesh import Mesh, free_port, is_serving
from finmesh.common.v1 import money_pb2
from finmesh.drill.forwarder import Forwarder
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.rpc.guard import reason_of
from finmesh.platform.storage.db import create_engine, is_transient
from tests.auth import SERVICE_SECRET, ActingAs, Book, Issuer
from tests.auth import channel as acting_channel

# Callees first, so payments' first calls find risk and notify up.
ORDER = ("notify", "risk", "payments")
# Reconnect quickly after a peer restarts: gRPC's default backoff grows to two minutes.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# Retrying these with the same key is safe: the server either did nothing or stored its answer.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
LEASE_SECONDS = 5
T = TypeVar("T")


async def patiently(make: Callable[[], Awaitable[T]], seconds: float = 30.0) -> T:
    """`make()` again while it fails the retryable way (UNAVAILABLE, a dropped or refused database connection),
    for up to `seconds`. The test's own set-up and read-backs use it: the PostgreSQL server is shared, and
    other suites can fill its connection slots for a moment (53300, answered as STORAGE_UNAVAILABLE)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await make()
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRIED or time.monotonic() > deadline:
                raise
        except Exception as error:  # only database outages are retried; anything else is raised again
            if not is_transient(error) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


# --- services as processes ----------------------------------------------------------------------------


class Fleet:
    """Notify, risk and payments as child processes on fixed loopback ports, each on its own database.

    The test's Issuer stands in for identity (keys and service tokens), as in the rest of the suite.
    A service killed with SIGKILL comes back on the same port and database, so its callers' channels
    reconnect to it.
    """

    def __init__(self, data_dir: Path, urls: dict[str, str], issuer: Issuer, env: dict[str, str] | None = None) -> None:
        self.mesh = Mesh(data_dir, database_urls=urls, with_fakes=False)
        self.mesh.extra_env.update(env or {})  # the events transport, say
        self.mesh.extra_env.update(
            {
                "FINMESH_AUTH_MODE": "enforce",
                "FINMESH_IDENTITY_TARGET": issuer.target,
                "FINMESH_SERVICE_SECRET": SERVICE_SECRET,
                "FINMESH_CHANNEL_SWEEP_INTERVAL_SECONDS": "3600",
                # Events a killed (or cut off) relay had claimed come free after its lease: 30 s in production,
                # short here so they are sent again, and deduplicated by notify, within the test.
                "FINMESH_OUTBOX_LEASE_SECONDS": str(LEASE_SECONDS),
            }
        )
        self.ports = {name: free_port() for name in ORDER}
        self.kills: Counter[str] = Counter()
        self.restart_seconds: list[float] = []

    def target(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def _targets(self) -> dict[str, str]:
        return {f"FINMESH_{name.upper()}_TARGET": self.target(name) for name in ("risk", "notify")}

    async def start(self, timeout: float = 60.0) -> None:
        self.mesh.log_dir.mkdir(parents=True, exist_ok=True)
        self.mesh.span_dir.mkdir(parents=True, exist_ok=True)
        for name in ORDER:
            self.mesh.start_one(name, self.ports[name], self._targets())
        await asyncio.to_thread(self.mesh.wait_ready, timeout)

    async def kill_and_restart(self, name: str, timeout: float = 30.0) -> float:
        """SIGKILL `name`, start it again on the same port and database; seconds until it serves again."""
        process = self.mesh.processes[name].process
        process.send_signal(signal.SIGKILL)
        code = await asyncio.to_thread(process.wait, 10)
        assert code == -signal.SIGKILL, f"{name} exited with {code} before the kill"
        self.kills[name] += 1
        started = time.monotonic()
        self.mesh.start_one(name, self.ports[name], self._targets())
        while not await asyncio.to_thread(is_serving, self.target(name), 0.5):
            if self.mesh.processes[name].process.poll() is not None:
                raise RuntimeError(f"{name} exited after its restart; see {self.mesh.processes[name].log_path}")
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{name} not serving {timeout}s after its restart")
            await asyncio.sleep(0.1)
        self.restart_seconds.append(time.monotonic() - started)
        return self.restart_seconds[-1]

    async def stop(self) -> dict[str, int]:
        """SIGTERM all, wait for their exit codes (off the event loop: a DatabaseLink in it must keep
        piping while they shut down)."""
        return await asyncio.to_thread(self.mesh.stop)


# --- accounts and load --------------------------------------------------------------------------------


async def open_wallets(
    target: str, run_id: str, issuer: Issuer, book: Book, payers: int, payees: int, top_up: int
) -> tuple[list[str], list[str]]:
    """Payer wallets topped up with `top_up` each, and payee wallets, opened by their owners."""
    async with acting_channel(target, issuer, book) as channel:
        stub = pb_grpc.PaymentsServiceStub(channel)

        async def wallet(i: int) -> str:
            request = pb.OpenAccountRequest(
                idempotency_key=f"{run_id}-open-{i}",
                owner_id=f"crash-{run_id}-user-{i}",
                kind=pb.ACCOUNT_KIND_CUSTOMER_WALLET,
                currency_code="CNY",
            )
            return (await patiently(lambda: stub.OpenAccount(request, timeout=20))).account.account_id

        accounts = [await wallet(i) for i in range(payers + payees)]
        for i, account in enumerate(accounts[:payers]):
            top = pb.TopUpRequest(
                idempotency_key=f"{run_id}-topup-{i}",
                account_id=account,
                channel="test_bank",
                amount=money_pb2.Money(currency_code="CNY", minor_units=top_up),
            )
            await patiently(lambda top=top: stub.TopUp(top, timeout=20))
    return accounts[:payers], accounts[payers:]


@dataclass
class Call:
    """One logical payment and every attempt it took."""

    key: str
    description: str
    payer: str
    payee: str
    amount: int
    failures: Counter[str] = field(default_factory=Counter)  # status code -> attempts that failed with it
    reasons: Counter[str] = field(default_factory=Counter)  # ErrorInfo reasons of those failures
    payment_id: str = ""
    status: int = 0
    error: str = ""
    seconds: float = 0.0  # from the first attempt to the answer, retries included
    # Gives up after its first failure, as a client without retries would: whether such a payment was
    # written is unknown to its caller, so it must exist whole or not at all.
    abandons: bool = False


@dataclass
class LoadResult:
    calls: list[Call]
    seconds: float

    @property
    def acknowledged(self) -> list[Call]:
        return [c for c in self.calls if c.payment_id]

    @property
    def unanswered(self) -> list[Call]:
        return [c for c in self.calls if not c.payment_id]

    def codes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for call in self.calls:
            total.update(call.failures)
        return total

    def reasons(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for call in self.calls:
            total.update(call.reasons)
        return total

    def figures(self) -> dict[str, Any]:
        waits = sorted(c.seconds for c in self.acknowledged) or [0.0]
        return {
            "calls": len(self.calls),
            "acknowledged": len(self.acknowledged),
            "completed_per_s": round(len(self.calls) / self.seconds, 1),
            "seconds": round(self.seconds, 1),
            "answer_p50_ms": round(waits[len(waits) // 2] * 1000),
            "answer_p99_ms": round(waits[min(len(waits) - 1, len(waits) * 99 // 100)] * 1000),
            "failed_attempts_by_code": dict(self.codes()),
            "reasons": dict(self.reasons()),
            "abandoning_calls": sum(1 for c in self.calls if c.abandons),
            "abandoned_unanswered": sum(1 for c in self.unanswered if c.abandons),
            "calls_retried": sum(1 for c in self.calls if c.failures),
        }


class RetryingLoad:
    """`count` payments started at `rate` per second (open loop), through `clients` channels.

    A call failing with UNAVAILABLE or DEADLINE_EXCEEDED is sent again, identical, with the same
    idempotency key, until it is answered or `give_up_after` seconds have passed; any other code ends it.
    Every `abandon_every`-th call (none when 0) gives up after its first failure instead.
    """

    def __init__(
        self,
        target: str,
        payers: list[str],
        payees: list[str],
        run_id: str,
        issuer: Issuer,
        book: Book,
        *,
        count: int,
        rate: float,
        clients: int = 4,
        attempt_timeout: float = 10.0,
        give_up_after: float = 45.0,
        abandon_every: int = 0,
    ) -> None:
        self.target, self.payers, self.payees, self.run_id = target, payers, payees, run_id
        self.interceptor = ActingAs(issuer, book)
        self.count, self.rate, self.clients = count, rate, clients
        self.attempt_timeout, self.give_up_after = attempt_timeout, give_up_after
        self.abandon_every = abandon_every
        self.started = asyncio.Event()

    def call(self, i: int) -> Call:
        return Call(
            key=f"crash-{self.run_id}-{i}",
            description=description(self.run_id, i),
            payer=self.payers[i % len(self.payers)],
            payee=self.payees[i % len(self.payees)],
            amount=100 + i % 7,
            abandons=bool(self.abandon_every) and i % self.abandon_every == self.abandon_every - 1,
        )

    async def run(self) -> LoadResult:
        # A subchannel pool per channel: otherwise channels to one target share one HTTP/2 connection.
        options = [("grpc.use_local_subchannel_pool", 1), *FAST_RECONNECT]
        channels = [
            grpc.aio.insecure_channel(self.target, options=options, interceptors=[self.interceptor])
            for _ in range(self.clients)
        ]
        stubs = [pb_grpc.PaymentsServiceStub(c) for c in channels]
        calls = [self.call(i) for i in range(self.count)]
        start = time.monotonic()
        self.started.set()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / self.rate - time.monotonic()))
            await self._send(stubs[i % len(stubs)], calls[i])

        try:
            await asyncio.gather(*(one(i) for i in range(self.count)))
        finally:
            for channel in channels:
                await channel.close()
        return LoadResult(calls, time.monotonic() - start)

    async def _send(self, stub: pb_grpc.PaymentsServiceStub, call: Call) -> None:
        request = pb.CreatePaymentRequest(
            idempotency_key=call.key,
            payer_account_id=call.payer,
            payee_account_id=call.payee,
            amount=money_pb2.Money(currency_code="CNY", minor_units=call.amount),
            capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
            description=call.description,
        )
        began = time.monotonic()
        deadline = began + self.give_up_after
        backoff = 0.05
        while True:
            try:
                reply = await stub.CreatePayment(request, timeout=self.attempt_timeout)
            except grpc.aio.AioRpcError as error:
                call.failures[error.code().name] += 1
                if reason := reason_of(error):
                    call.reasons[reason] += 1
                if error.code() in RETRIED and not call.abandons and time.monotonic() < deadline:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
                    continue
                call.error = f"{error.code().name}: {error.details()}"
                return
            call.payment_id, call.status = reply.payment.payment_id, reply.payment.status
            call.seconds = time.monotonic() - began
            return


def description(run_id: str, i: int) -> str:
    return f"crash {run_id} #{i}"


# --- the books --------------------------------------------------------------------------------------


@dataclass
class Books:
    """What the payments database holds for one run, and every inconsistency found in it."""

    payments: int = 0
    captured: int = 0
    in_review: int = 0
    written_unacknowledged: int = 0  # written whole, though their callers gave up before the answer
    outbox_events: int = 0
    # (payer, payee, amount, status) of every payment of the run, as written.
    moves: list[tuple[str, str, int, str]] = field(default_factory=list)
    problems: dict[str, list[Any]] = field(default_factory=dict)

    def problem(self, kind: str, item: Any) -> None:
        self.problems.setdefault(kind, []).append(item)

    def losses(self) -> int:
        return sum(len(items) for items in self.problems.values())


async def audit_payments(url: str, run_id: str, calls: list[Call]) -> Books:
    """Every acknowledged call exists exactly once as the payment it was told; every payment of the run
    (acknowledged or not) is whole: its transfer and entries, its outbox event, its stored answer;
    every transfer balances, every currency sums to zero, every account's balance equals its entries."""
    books = Books()
    rows, transfers, events, answers, accounts = await patiently(lambda: _payment_rows(url, run_id))

    books.payments = len(rows)
    books.moves = [(r.payer_account_id, r.payee_account_id, int(r.amount), r.status) for r in rows]
    books.outbox_events = len(events)
    by_description = Counter(r.description for r in rows)
    for text_, n in by_description.items():
        if n > 1:
            books.problem("doubled", (text_, n))
    row_of = {r.description: r for r in rows}
    for call in calls:
        row = row_of.get(call.description)
        if call.payment_id and (row is None or row.payment_id != call.payment_id or row.amount != call.amount):
            books.problem("acknowledged_but_missing_or_different", (call.description, call.payment_id))
        if not call.payment_id and row is not None:
            books.written_unacknowledged += 1  # allowed (it committed, the answer was lost): whole, checked below

    transfers_of: dict[str, list[Any]] = {}
    for t in transfers:
        transfers_of.setdefault(t.reference, []).append(t)
        if t.net != 0 or t.legs < 2:
            books.problem("unbalanced_transfer", (t.transfer_id, t.kind, t.legs, int(t.net)))
    events_of: Counter[str] = Counter()
    for e in events:
        payload = e.payload if isinstance(e.payload, dict) else json.loads(e.payload)
        events_of[payload.get("payment_id", "")] += 1
    answered = {
        a.key: pb.CreatePaymentResponse.FromString(a.response).payment.payment_id
        for a in answers
        if a.response is not None
    }
    key_of = {c.description: c.key for c in calls}
    for r in rows:
        payment_transfers = [t for t in transfers_of.get(r.payment_id, []) if t.kind == "PAYMENT"]
        if r.status == "CAPTURED":
            books.captured += 1
            if len(payment_transfers) != 1 or payment_transfers[0].amount != r.amount:
                books.problem("captured_without_its_one_transfer", (r.payment_id, len(payment_transfers)))
        elif r.status == "IN_REVIEW":
            books.in_review += 1
            if payment_transfers:
                books.problem("held_but_transferred", r.payment_id)
        else:
            books.problem("unexpected_status", (r.payment_id, r.status))
        if events_of[r.payment_id] != 1:
            books.problem("payment_events_not_one", (r.payment_id, events_of[r.payment_id]))
        if answered.get(key_of.get(r.description, "")) != r.payment_id:
            books.problem("stored_answer_missing_or_different", r.payment_id)

    totals: Counter[str] = Counter()
    for a in accounts:
        totals[a.currency] += int(a.balance)
        if int(a.balance) != int(a.entries):
            books.problem("balance_differs_from_entries", (a.account_id, int(a.balance), int(a.entries)))
    for currency, total in totals.items():
        if total != 0:
            books.problem("ledger_not_zero", (currency, total))
    return books


async def _payment_rows(url: str, run_id: str) -> tuple[Any, ...]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT payment_id, description, status, amount, payer_account_id, payee_account_id "
                        "FROM payments WHERE description LIKE :p"
                    ),
                    {"p": f"crash {run_id} #%"},
                )
            ).all()
            transfers = (
                await conn.execute(
                    text(
                        "SELECT t.transfer_id, t.reference, t.kind, t.amount, COUNT(e.entry_id) AS legs, "
                        "COALESCE(SUM(e.amount), 0) AS net FROM transfers t LEFT JOIN ledger_entries e "
                        "ON e.transfer_id = t.transfer_id GROUP BY t.transfer_id, t.reference, t.kind, t.amount"
                    )
                )
            ).all()
            events = (
                await conn.execute(
                    text("SELECT event_id, event_type, payload FROM outbox WHERE event_type LIKE 'payments.payment.%'")
                )
            ).all()
            answers = (
                await conn.execute(
                    text(
                        "SELECT key, response FROM scoped_idempotency_keys"
                        " WHERE method = 'CreatePayment' AND key LIKE :p"
                    ),
                    {"p": f"crash-{run_id}-%"},
                )
            ).all()
            accounts = (
                await conn.execute(
                    text(
                        "SELECT a.account_id, a.currency, a.available + a.held + a.unsettled AS balance, "
                        "COALESCE((SELECT SUM(e.amount) FROM ledger_entries e WHERE e.account_id = a.account_id), 0) "
                        "AS entries FROM accounts a"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    return rows, transfers, events, answers, accounts


async def expected_balances_hold(
    target: str, books: Books, payers: list[str], payees: list[str], top_up: int, issuer: Issuer, book: Book
) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """Through the API: each wallet's (available, held) against what the run's payments imply (the audit
    has matched the acknowledged ones to their calls). Returns the wallets that differ."""
    expected = {a: [top_up if a in payers else 0, 0] for a in payers + payees}
    for payer, payee, amount, status in books.moves:
        expected[payer][0] -= amount
        if status == "CAPTURED":
            expected[payee][0] += amount
        else:  # in review (risk unreachable): the payer's funds are held
            expected[payer][1] += amount
    wrong = []
    async with acting_channel(target, issuer, book) as channel:
        stub = pb_grpc.PaymentsServiceStub(channel)
        for account, (available, held) in expected.items():
            read = pb.GetAccountRequest(account_id=account)
            balance = (await patiently(lambda read=read: stub.GetAccount(read, timeout=20))).account.balance
            found = (balance.available_minor_units, balance.held_minor_units)
            if found != (available, held):
                wrong.append((account, found, (available, held)))
    return wrong


# --- the outbox and notify --------------------------------------------------------------------------


async def outbox_pending(url: str) -> tuple[int, int]:
    """(undelivered live events, dead events) in a service's outbox."""
    return await patiently(lambda: _outbox_counts(url))


async def _outbox_counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            pending = await conn.scalar(text("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND NOT dead"))
            dead = await conn.scalar(text("SELECT COUNT(*) FROM outbox WHERE dead"))
    finally:
        await engine.dispose()
    return int(pending or 0), int(dead or 0)


async def wait_drained(url: str, timeout: float) -> tuple[float, tuple[int, int]]:
    """Seconds until payments' outbox has nothing left to deliver (or `timeout`), and the last count."""
    started = time.monotonic()
    while True:
        counts = await outbox_pending(url)
        if counts[0] == 0 or time.monotonic() - started > timeout:
            return time.monotonic() - started, counts
        await asyncio.sleep(0.5)


async def wait_received(payments_url: str, notify_url: str, timeout: float) -> float:
    """Seconds until notify has received every event payments' outbox handed over (or `timeout`): on the broker
    transport the outbox drains into notify's queue, which notify empties after."""
    started = time.monotonic()
    while True:
        outbox, received, _ = await patiently(lambda: _delivery_rows(payments_url, notify_url))
        if {r.event_id for r in outbox} <= set(received) or time.monotonic() - started > timeout:
            return time.monotonic() - started
        await asyncio.sleep(0.5)


async def audit_delivery(payments_url: str, notify_url: str) -> dict[str, list[Any]]:
    """Every event in payments' outbox reached notify exactly once: delivered, received once (the primary
    key of notify's received_events makes a second receipt impossible, so: none missing, none foreign),
    and no notification drafted twice for one event."""
    outbox, received, drafted = await patiently(lambda: _delivery_rows(payments_url, notify_url))
    sent = {r.event_id for r in outbox}
    got = Counter(received)
    return {
        "undelivered": [r.event_id for r in outbox if r.delivered_at is None or r.dead],
        "missing_in_notify": sorted(sent - set(got)),
        "received_twice": [e for e, n in got.items() if n > 1],
        "foreign_in_notify": sorted(set(got) - sent),
        "drafted_twice": [tuple(r) for r in drafted],
    }


async def _delivery_rows(payments_url: str, notify_url: str) -> tuple[Any, list[str], Any]:
    p_engine, n_engine = create_engine(payments_url), create_engine(notify_url)
    try:
        async with p_engine.connect() as conn:
            outbox = (await conn.execute(text("SELECT event_id, delivered_at, dead FROM outbox"))).all()
        async with n_engine.connect() as conn:
            received = [
                r.event_id
                for r in await conn.execute(text("SELECT event_id FROM received_events WHERE source = 'payments'"))
            ]
            drafted = (
                await conn.execute(
                    text(
                        "SELECT event_id, user_id, channel, template, COUNT(*) AS n FROM notifications"
                        " WHERE event_id <> '' "
                        "GROUP BY event_id, user_id, channel, template HAVING COUNT(*) > 1"
                    )
                )
            ).all()
    finally:
        await p_engine.dispose()
        await n_engine.dispose()
    return outbox, received, drafted


# --- database faults --------------------------------------------------------------------------------


def database_name(url: str) -> str:
    return str(make_url(url).database)


async def terminate_backends(admin: asyncpg.Connection, database: str) -> int:
    """Drop every connection to `database` (only that one: the server is shared); how many were dropped."""
    return int(
        await admin.fetchval(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        or 0
    )


class DatabaseLink:
    """A TCP hop between one service and PostgreSQL, so that service alone can lose its database server
    (the real server is shared with other tests and is never restarted)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._server = f"{make_url(url).host}:{make_url(url).port or 5432}"
        self._forwarder = Forwarder(self._server)
        self.outage_seconds = 0.0

    async def start(self) -> str:
        """The URL the service should use: through this link."""
        port = await self._forwarder.start()
        return make_url(self.url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    async def outage(self, admin: asyncpg.Connection, seconds: float) -> int:
        """As if the server restarted: every connection dropped, new ones refused for `seconds`, then back.
        Returns how many connections were dropped."""
        started = time.monotonic()
        self._forwarder.switch("127.0.0.1:1")  # nothing listens on port 1: connecting fails
        try:
            dropped = await terminate_backends(admin, database_name(self.url))
            await asyncio.sleep(seconds)
        finally:
            self._forwarder.switch(self._server)
        self.outage_seconds += time.monotonic() - started
        return dropped

    @property
    def refused(self) -> int:
        """Connections the service attempted during outages."""
        return sum(self._forwarder.refused.values())

    async def close(self) -> None:
        await self._forwarder.close()


def run_id() -> str:
    return uuid.uuid4().hex[:8]
