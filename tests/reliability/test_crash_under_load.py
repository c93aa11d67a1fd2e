"""SIGKILL payments, then risk, then notify while a bounded payment load runs; each comes back on its port
and database (SQLite files, and PostgreSQL).

Afterwards nothing is lost or doubled: every acknowledged payment exists
exactly once as the payment its caller was told, no payment is half-written
(transfer, entries, outbox event, stored answer all there or none), the
ledger sums to zero and every balance equals its entries, and every event in
payments' outbox reached notify exactly once. On both events transports: the gRPC relay, and RabbitMQ (where
notify killed mid-batch gets its unacknowledged messages again and its dedupe applies each once).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from finmesh.notify.api.events_consumer import BINDINGS
from tests.auth import Book, Issuer
from tests.rabbitmq import Vhost
from tests.reliability.crash_support import (
    Fleet,
    RetryingLoad,
    audit_delivery,
    audit_payments,
    expected_balances_hold,
    open_wallets,
    run_id,
    wait_drained,
    wait_received,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

# 30 payments a second for 10 s: 15 per payer, under risk's velocity rule (20 per user in 10 minutes).
COUNT, RATE, PAYERS, PAYEES, TOP_UP = 300, 30.0, 20, 8, 1_000_000
# Seconds into the load at which each service is killed (and at once restarted).
KILLS = (("payments", 1.5), ("risk", 4.0), ("notify", 6.5))
# The killed relay's claims come free after the lease (crash_support.LEASE_SECONDS), then all must drain.
DRAIN_TIMEOUT = 40.0


async def test_sigkill_each_service_under_load(databases: Any, tmp_path: Path, events_transport: Vhost | None) -> None:
    started = time.monotonic()
    run = run_id()
    urls = {name: await databases.new(name) for name in ("notify", "risk", "payments")}
    issuer, book = await Issuer().start(), Book()
    if events_transport:
        # Notify's queues exist from its first start in any deployment (here it starts with the load).
        await events_transport.declare("notify", BINDINGS)
    fleet = Fleet(tmp_path / "mesh", urls, issuer, events_transport.env() if events_transport else None)
    try:
        await fleet.start()
        target = fleet.target("payments")
        payers, payees = await open_wallets(target, run, issuer, book, PAYERS, PAYEES, TOP_UP)

        load = RetryingLoad(target, payers, payees, run, issuer, book, count=COUNT, rate=RATE, abandon_every=10)
        running = asyncio.create_task(load.run())
        await load.started.wait()
        load_start = time.monotonic()

        async def kill_at(name: str, at: float) -> None:
            await asyncio.sleep(max(0.0, load_start + at - time.monotonic()))
            assert not running.done(), f"the load ended before {name} was killed: the kill would prove nothing"
            await fleet.kill_and_restart(name)

        # On their own clocks: one service's slow restart does not push the next kill past the load.
        kills = [asyncio.create_task(kill_at(name, at)) for name, at in KILLS]
        result = await running
        await asyncio.gather(*kills)

        drain_seconds, (pending, dead) = await wait_drained(urls["payments"], DRAIN_TIMEOUT)
        received_seconds = await wait_received(urls["payments"], urls["notify"], DRAIN_TIMEOUT)
        books = await audit_payments(urls["payments"], run, result.calls)
        delivery = await audit_delivery(urls["payments"], urls["notify"])
        wrong_balances = await expected_balances_hold(target, books, payers, payees, TOP_UP, issuer, book)
    finally:
        codes = await fleet.stop()
        await issuer.stop()

    figures = {
        "database": databases.kind,
        "events": "rabbitmq" if events_transport else "grpc",
        "load": result.figures(),
        "kills": dict(fleet.kills),
        "restart_to_serving_s": [round(s, 2) for s in fleet.restart_seconds],
        "payments": {
            "written": books.payments,
            "captured": books.captured,
            "in_review": books.in_review,
            "written_unacknowledged": books.written_unacknowledged,
        },
        "payment_events": books.outbox_events,
        "outbox_drained_after_load_s": round(drain_seconds, 1),
        "all_received_after_drain_s": round(received_seconds, 1),
        "losses": books.losses() + sum(len(v) for v in delivery.values()) + len(wrong_balances),
        "test_seconds": round(time.monotonic() - started, 1),
    }
    print("\ncrash under load: " + json.dumps(figures))

    failed = [(c.description, c.error, dict(c.failures)) for c in result.unanswered if not c.abandons]
    assert failed == [], f"calls not acknowledged after retries: {failed[:10]}"
    # A crash shows as UNAVAILABLE (or a deadline while a peer restarts); never INTERNAL, UNKNOWN or a refusal.
    assert set(result.codes()) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, result.codes()
    assert sum(result.codes().values()) > 0, "no call ever failed: the kills did not hit the load"
    assert books.problems == {}, books.problems
    # Every acknowledged payment and none else, except those a caller gave up on that did commit (whole).
    assert books.payments == len(result.acknowledged) + books.written_unacknowledged
    assert (pending, dead) == (0, 0), f"outbox {DRAIN_TIMEOUT}s after the load: {pending} pending, {dead} dead"
    assert {k: v for k, v in delivery.items() if v} == {}, delivery
    assert books.outbox_events == books.payments
    assert wrong_balances == [], wrong_balances[:10]
    # The restarted services stop cleanly.
    assert set(codes.values()) == {0}, codes
