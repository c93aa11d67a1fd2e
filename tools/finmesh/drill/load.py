"""A steady, bounded payment load: a fixed number of payments at a fixed rate, each with its own idempotency key.

The client's retry policy is the one the contracts make safe: UNAVAILABLE
(nothing answered, or the server refused the call while draining) and a
CANCELLED sent by the server (see _RETRYABLE) are retried with the same key and
the same request, so a payment that did commit is answered from the stored
reply instead of being made twice. Anything else is a failure the drill reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from finmesh.common.v1 import money_pb2
from finmesh.payments.v1 import payments_service_pb2 as pb
from finmesh.payments.v1 import payments_service_pb2_grpc as pb_grpc
from finmesh.platform.backoff import Backoff

# Codes after which the identical request goes again with the same idempotency key; either may have
# committed, and the key makes a retry answer from the stored reply. CANCELLED is here because a
# draining server sends it: grpc's C-core (1.85) cancels, rather than refuses, the calls it had
# received but not yet handed to the application when stop() begins, and those that arrive before its
# GOAWAY reaches the client (https://github.com/grpc/grpc/issues/41785); grpc.aio has no way to send
# GOAWAY without stopping. Our own cancellation never shows up here: grpc.aio raises
# asyncio.CancelledError for a locally cancelled call, not AioRpcError.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
# The drill's client retry waits as before the one Backoff: 50 ms doubling to 0.5 s, ceilings without jitter.
_RETRY_WAIT = Backoff(0.05, 0.5)


def client_channel(target: str, interceptors: list[grpc.aio.ClientInterceptor] | None = None) -> grpc.aio.Channel:
    """One client's channel, i.e. one HTTP/2 connection through the Service stand-in, set as the mesh's own
    (finmesh.platform.rpc.channels.open_channel: pick_first to one Service address, 30 s keepalive, reconnect
    backoff capped at 5 s). After a server's GOAWAY (max connection age), grpc-core reconnects by itself on the
    next call, through the Service, so a new connection is routed afresh; nothing here has to.

    A local subchannel pool: otherwise every channel to one target in this process would share a single
    connection, and the drill would have one client, not several (in a cluster each client pod has its own).
    """
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_reconnect_backoff_ms", 5_000),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors or [])


@dataclass
class CallRecord:
    """One logical payment call and everything its attempts saw."""

    index: int
    key: str
    description: str
    payer: str
    payee: str
    amount: int
    attempts: int = 0
    retried_codes: list[str] = field(default_factory=list)
    payment_id: str = ""
    status: int = 0
    error: str = ""
    started: float = 0.0
    ended: float = 0.0

    @property
    def acknowledged(self) -> bool:
        return bool(self.payment_id)


@dataclass
class LoadReport:
    records: list[CallRecord]
    seconds: float

    @property
    def acknowledged(self) -> list[CallRecord]:
        return [r for r in self.records if r.acknowledged]

    @property
    def failed(self) -> list[CallRecord]:
        return [r for r in self.records if not r.acknowledged]

    @property
    def retries(self) -> int:
        return sum(len(r.retried_codes) for r in self.records)

    def summary(self) -> str:
        latencies = sorted(r.ended - r.started for r in self.acknowledged)
        p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0
        return (
            f"{len(self.records)} calls in {self.seconds:.1f}s, {len(self.acknowledged)} acknowledged, "
            f"{len(self.failed)} failed, {self.retries} retries "
            f"({sum(1 for r in self.records if r.retried_codes)} calls retried), p99 {p99 * 1000:.0f} ms"
        )


@dataclass(frozen=True)
class LoadShape:
    count: int = 400
    rate: float = 25.0  # calls started per second
    clients: int = 4  # channels, i.e. HTTP/2 connections through the Service stand-in
    max_in_flight: int = 32
    attempts: int = 8
    deadline: float = 5.0  # per attempt
    currency: str = "CNY"


class PaymentLoad:
    """Pays from `payers` to `payees` in rotation through `target`, until `stop()` or shape.count calls.

    A drill stops the load once its last step is done, so a slow machine (services that take long to
    start) cannot run out of load before the step it wants to prove; the count is the bound.
    """

    def __init__(
        self,
        target: str,
        payers: list[str],
        payees: list[str],
        run_id: str,
        shape: LoadShape | None = None,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
    ) -> None:
        self._target = target
        # E.g. one that presents each payer's access token (auth is enforced by default).
        self._interceptors = interceptors or []
        self._payers = payers
        self._payees = payees
        self._run_id = run_id
        self.shape = shape or LoadShape()
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        """Start no more calls; those already started finish (with their retries) and are reported."""
        self._stopped.set()

    def record(self, i: int) -> CallRecord:
        """The i-th call: fixed by i alone, so a retry sends the identical request."""
        return CallRecord(
            index=i,
            key=f"drill-{self._run_id}-{i}",
            description=f"drill {self._run_id} #{i}",
            payer=self._payers[i % len(self._payers)],
            payee=self._payees[i % len(self._payees)],
            amount=100 + i % 7,
        )

    async def run(self) -> LoadReport:
        s = self.shape
        channels = [client_channel(self._target, self._interceptors) for _ in range(s.clients)]
        stubs = [pb_grpc.PaymentsServiceStub(c) for c in channels]
        gate = asyncio.Semaphore(s.max_in_flight)
        records: list[CallRecord] = []
        calls: list[asyncio.Task[None]] = []
        start = time.monotonic()

        async def one(record: CallRecord) -> None:
            async with gate:
                await self._call(stubs[record.index % len(stubs)], record)

        try:
            for i in range(s.count):  # open loop: call i starts at start + i / rate, whatever came back
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), start + i / s.rate - time.monotonic())
                if self._stopped.is_set():
                    break
                records.append(self.record(i))
                calls.append(asyncio.create_task(one(records[-1])))
            await asyncio.gather(*calls)
        finally:
            for call in calls:
                call.cancel()
            for channel in channels:
                await channel.close()
        return LoadReport(records, time.monotonic() - start)

    async def _call(self, stub: pb_grpc.PaymentsServiceAsyncStub, record: CallRecord) -> None:
        s = self.shape
        request = pb.CreatePaymentRequest(
            idempotency_key=record.key,
            payer_account_id=record.payer,
            payee_account_id=record.payee,
            amount=money_pb2.Money(currency_code=s.currency, minor_units=record.amount),
            capture_mode=pb.CAPTURE_MODE_AUTOMATIC,
            description=record.description,
        )
        record.started = time.monotonic()
        while True:
            record.attempts += 1
            try:
                reply = await stub.CreatePayment(request, timeout=s.deadline)
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRYABLE and record.attempts < s.attempts:
                    record.retried_codes.append(error.code().name)
                    await asyncio.sleep(_RETRY_WAIT.ceiling(record.attempts - 1))
                    continue
                record.error = f"{error.code().name}: {error.details()}"
                break
            record.payment_id = reply.payment.payment_id
            record.status = reply.payment.status
            break
        record.ended = time.monotonic()


@dataclass
class ReadReport:
    """Outcomes of a read load: calls answered, and those that failed after the retry policy, by code."""

    answered: int = 0
    retries: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        failed = sum(self.failed.values())
        return f"{self.answered} answered, {failed} failed {dict(self.failed)}, {self.retries} retries"


class AccountReads:
    """GetAccount of `accounts` in rotation through `target` at `rate` calls/s over `clients` connections,
    until `stop()`: a light load whose only purpose is to be spread over colors (the canary share)."""

    def __init__(
        self,
        target: str,
        accounts: list[str],
        *,
        rate: float,
        clients: int,
        interceptors: list[grpc.aio.ClientInterceptor] | None = None,
        deadline: float = 5.0,
        attempts: int = 8,
    ) -> None:
        self._target, self._accounts, self._interceptors = target, accounts, interceptors
        self.rate, self.clients, self.deadline, self.attempts = rate, clients, deadline, attempts
        self.report = ReadReport()
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> ReadReport:
        channels = [client_channel(self._target, self._interceptors) for _ in range(self.clients)]
        stubs = [pb_grpc.PaymentsServiceStub(c) for c in channels]
        calls: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        try:
            i = 0
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), start + i / self.rate - time.monotonic())
                if self._stopped.is_set():
                    break
                request = pb.GetAccountRequest(account_id=self._accounts[i % len(self._accounts)])
                task = asyncio.create_task(self._call(stubs[i % len(stubs)], request))
                calls.add(task)
                task.add_done_callback(calls.discard)
                i += 1
            await asyncio.gather(*calls)
        finally:
            for channel in channels:
                await channel.close()
        return self.report

    async def _call(self, stub: pb_grpc.PaymentsServiceAsyncStub, request: pb.GetAccountRequest) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                await stub.GetAccount(request, timeout=self.deadline)
            except grpc.aio.AioRpcError as error:
                if error.code() in _RETRYABLE and attempt < self.attempts:
                    self.report.retries += 1
                    await asyncio.sleep(_RETRY_WAIT.ceiling(attempt - 1))
                    continue
                self.report.failed[error.code().name] += 1
                return
            self.report.answered += 1
            return
