"""The local canary drill: `finmesh rollout`'s Controller drives payments through canary and blue-green rollouts
judged by a real Prometheus, with real processes on loopback and payments flowing all along.

One run, three rollouts of payments, under one steady payment load (each call with its own idempotency key,
retried on UNAVAILABLE/CANCELLED with the same key):
(a) canary blue 1 → green 2 through 10 → 25 → 50 → 100 %, analysis after each step: Healthy, 0 failed calls;
(b) canary green 2 → blue 3, a bad build failing 30 % of its calls (INTERNAL, before the handler): the first
    analysis aborts it; the share of calls it got is bounded; traffic back on green with 0 failed calls after;
(c) blue-green green 2 → blue 4 with pre- and post-promotion analysis (a light read load goes through the
    preview Service), then `undo` while green is still warm: 0 failed calls.
The books then balance and every acknowledged payment exists exactly once, as in the blue-green drill.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from finmesh.drill.faulty import Faults
from finmesh.drill.load import AccountReads, LoadShape, PaymentLoad
from finmesh.drill.local_backend import LocalBackend
from finmesh.drill.processes import start_service, wait_serving
from finmesh.drill.share import ShareSampler, share_between
from finmesh.rollout.analysis import PrometheusAnalyzer
from finmesh.rollout.model import Analysis, SetWeight, Step, Thresholds
from tests.auth import SERVICE_SECRET, ActingAs, Book, Issuer
from tests.deploy.drill_books import check_books, open_accounts, payment_rows
from tests.prometheus import Prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
# The Controller (fix/rollout-core) may land after this drill: until then the drill skips, saying why.
Controller = pytest.importorskip(
    "finmesh.rollout.controller", reason="finmesh.rollout.controller (the rollout Controller) is not merged yet"
).Controller

# Risk's velocity rule allows 20 payments per payer in 10 minutes: enough payers for the whole run.
PAYERS, PAYEES = 96, 8
LOAD = LoadShape(count=1800, rate=15.0, clients=32)  # stopped after (c); the count only bounds it
TOP_UP = 1_000_000
BAD_WEIGHT = 0.10  # the first canary step
BAD_SHARE_BOUND = BAD_WEIGHT + 3 * math.sqrt(BAD_WEIGHT * (1 - BAD_WEIGHT) / LOAD.clients)
BAD = Faults(fail_share=0.3)  # version "3": 30 % of its calls fail with INTERNAL
SERVER_SETTINGS = {
    # Short, so a weight step shows in the share of calls within seconds (docs/DEPLOY.md: the bound).
    "FINMESH_MAX_CONNECTION_AGE_SECONDS": "2",
    "FINMESH_DRAIN_DELAY_SECONDS": "1",
    "FINMESH_SHUTDOWN_GRACE_SECONDS": "5",
    "FINMESH_AUTH_MODE": "enforce",
    "FINMESH_TRACING_ENABLED": "false",
}
# A PromQL window of 10 s over 1 s scrapes, measured every 2 s: short enough for a drill. Latency is judged
# loosely: one 2-core machine runs everything here, so p99 swings with whatever else it is doing; the error
# rate is what the drill proves.
THRESHOLDS = Thresholds(
    window="10s",
    interval_seconds=2.0,
    max_latency_p99_ratio=3.0,
    latency_slack_seconds=0.5,
    min_call_rate=0.2,
    failure_limit=0,
    # The candidate's series start at its first calls, up to 1.1 x max connection age after the step, and
    # rate() needs two scrapes: the first measurements of a step have no data (Argo's initialDelay).
    inconclusive_limit=6,
)
ANALYSIS = 8.0  # seconds of each analysis step
CANARY_STEPS: list[Step] = [
    SetWeight(10),
    Analysis(ANALYSIS),
    SetWeight(25),
    Analysis(ANALYSIS),
    SetWeight(50),
    Analysis(ANALYSIS),
    SetWeight(100),
]
BLUE_GREEN_STEPS: list[Step] = [Analysis(ANALYSIS), SetWeight(100), Analysis(ANALYSIS)]


def _at(backend: LocalBackend, verb: str, *args: str, after: float = 0.0) -> float:
    """When the backend was first asked `verb` with `args` after `after` (time.monotonic())."""
    return next(a[0] for a in backend.actions if a[1] == verb and a[2 : 2 + len(args)] == args and a[0] >= after)


async def test_canary_drill(tmp_path: Path) -> None:
    """(a) a good canary reaches 100 % with 0 failed calls; (b) a bad one is aborted by the first analysis,
    its share of calls bounded, 0 failed calls after; (c) blue-green promote then undo, 0 failed calls."""
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    issuer, book = await Issuer().start(), Book()
    env = {
        **SERVER_SETTINGS,
        "FINMESH_DATA_DIR": str(tmp_path / "data"),
        "FINMESH_IDENTITY_TARGET": issuer.target,
        "FINMESH_SERVICE_SECRET": SERVICE_SECRET,
    }
    database = {name: f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}" for name in ("notify", "risk", "payments")}
    logs = tmp_path / "logs"
    logs.mkdir()
    backend = LocalBackend(tmp_path / "state", logs, pods=20, faulty={"3": BAD}, seed=19)
    prometheus: Prometheus | None = None
    helpers = []
    lines: list[str] = []
    try:
        notify = start_service(
            "notify", color="local", version="1", env={**env, "FINMESH_DATABASE_URL": database["notify"]}, log_dir=logs
        )
        risk = start_service(
            "risk", color="local", version="1", env={**env, "FINMESH_DATABASE_URL": database["risk"]}, log_dir=logs
        )
        helpers += [notify, risk]
        await asyncio.gather(wait_serving(notify), wait_serving(risk))
        payments_env = {
            **env,
            "FINMESH_DATABASE_URL": database["payments"],
            "FINMESH_RISK_TARGET": risk.target,
            "FINMESH_NOTIFY_TARGET": notify.target,
            "FINMESH_CHANNEL_SWEEP_INTERVAL_SECONDS": "3600",
        }
        await backend.add_service("payments", payments_env, color="blue", version="1")
        metrics = backend.metrics_targets("payments")
        prometheus = Prometheus(tmp_path / "prometheus", {"payments": list(metrics.values())}).start("1s")
        sampler = ShareSampler("payments", every=0.25)
        for color, target in metrics.items():
            sampler.watch(color, target)
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(sampler.run(stop_sampling))

        target = backend.active_target("payments")
        payers, payees = await open_accounts(target, run_id, issuer, book, payers=PAYERS, payees=PAYEES, top_up=TOP_UP)
        load = PaymentLoad(target, payers, payees, run_id, LOAD, interceptors=[ActingAs(issuer, book)])
        paying = asyncio.create_task(load.run())
        analyzer = PrometheusAnalyzer(prometheus.url, THRESHOLDS, log=lines.append)
        controller = Controller(
            backend, analyzer, actor="drill", log=lines.append, clock=time.time, sleep=time.sleep, poll_seconds=0.5
        )
        await asyncio.sleep(THRESHOLDS.interval_seconds * 2)  # blue's series exist before anything is judged

        # (a) a good version, canary to 100 %.
        a_start = time.monotonic()
        good = await asyncio.to_thread(controller.start, "payments", "2", "canary", CANARY_STEPS)
        a_end = time.monotonic()
        assert good.phase == "Healthy", (good.message, lines[-30:])

        # (b) a bad version, canary: aborted at the first analysis.
        b_start = time.monotonic()
        bad = await asyncio.to_thread(controller.start, "payments", "3", "canary", CANARY_STEPS)
        b_end = time.monotonic()
        assert bad.phase == "Degraded" and "error_rate" in bad.message, (bad.phase, bad.message, lines[-30:])
        bad_step = _at(backend, "set_weight", "payments", "blue", "10", after=b_start)
        bad_abort = _at(backend, "set_active", "payments", "green", after=bad_step)
        # The abort is done when the bad version has drained and exited: until then connections pinned to it
        # (for up to 1.1 x max connection age) and calls in its drain delay still reach it.
        bad_drain = backend.drains[-1]
        bad_gone = _at(backend, "scale_down", "payments", "blue", after=bad_abort) + bad_drain.exited_after

        # (c) blue-green with analysis before and after promotion, then undo while green is warm.
        c_start = time.monotonic()
        preview_reads = AccountReads(
            backend.preview_target("payments"), payers[:8], rate=5.0, clients=2, interceptors=[ActingAs(issuer, book)]
        )

        async def through_preview() -> None:
            while not backend.view("payments").preview:  # the preview Service has pods only once deployed
                await asyncio.sleep(0.1)
            await preview_reads.run()

        previewing = asyncio.create_task(through_preview())
        promoted = await asyncio.to_thread(
            controller.start, "payments", "4", "blueGreen", BLUE_GREEN_STEPS, scale_down_delay=600.0
        )
        await asyncio.sleep(2 * THRESHOLDS.interval_seconds)  # payments flow on blue 4 for a moment
        preview_reads.stop()  # undo turns the preview Service off
        await previewing
        undone = await asyncio.to_thread(controller.undo, "payments", "drill: undo while the old color is warm")
        await asyncio.sleep(3)  # and on green 2 again
        c_end = time.monotonic()
        load.stop()
        report = await paying
        stop_sampling.set()
        await sampling
        rows, totals = await payment_rows(database["payments"], run_id)
        await check_books(target, report, payers, payees, issuer, book, TOP_UP)
        elapsed = time.monotonic() - started
    finally:
        print("\n".join(lines))  # the Controller's and the analysis' own lines: what an SRE would read
        await backend.close()
        for proc in helpers:
            if proc.process.poll() is None:
                proc.process.terminate()
        for proc in helpers:
            proc.process.wait(15)
        if prometheus is not None:
            prometheus.stop()
        await issuer.stop()

    def failed(since: float, until: float) -> list[Any]:
        return [r for r in report.failed if since <= r.started < until]

    during = [r for r in sampler.readings if bad_step <= r.at <= bad_gone + 0.5]
    bad_share = share_between(during[0], during[-1], "blue") if len(during) > 1 else None
    bad_calls = during[-1].calls.get("blue", 0) - during[0].calls.get("blue", 0) if len(during) > 1 else 0
    figures = {
        "load": report.summary(),
        "(a) canary 1 -> 2": {"phase": good.phase, "seconds": round(a_end - a_start, 1)},
        "(b) canary 2 -> 3 (bad)": {
            "phase": bad.phase,
            "message": bad.message,
            "seconds from 10 % to abort": round(bad_abort - bad_step, 1),
            "seconds from abort to the bad version's exit": round(bad_gone - bad_abort, 1),
            "calls failed after the flip back, before that exit": len(failed(bad_abort, bad_gone)),
            # From its own /metrics, read every 0.25 s until it exited: a lower bound.
            "calls that reached the bad version (at least)": max(bad_calls, len(failed(b_start, b_end))),
            "their share of the calls meanwhile": None if bad_share is None else round(bad_share, 3),
            "calls failed (all before the bad version's exit)": len(failed(b_start, b_end)),
            "seconds": round(b_end - b_start, 1),
        },
        "(c) blue-green 2 -> 4, undo": {
            "promoted": promoted.phase,
            "undone": undone.phase,
            "preview reads": preview_reads.report.summary(),
            "seconds": round(c_end - c_start, 1),
        },
        "retried codes": Counter(c for r in report.records for c in r.retried_codes),
        "drill seconds": round(elapsed, 1),
    }
    print("\ncanary drill: " + json.dumps(figures, default=str, indent=1))

    # (a) the good version went through every step to stable, no call failed.
    assert good.phase == "Healthy", (good.message, lines[-20:])
    assert failed(0, b_start) == [], [(r.index, r.error) for r in failed(0, b_start)][:10]
    # (b) aborted by the metric analysis at the first step, the message naming the query and the values.
    assert bad.phase == "Degraded" and "error_rate" in bad.message, bad.message
    assert not any(a[1] == "set_weight" and a[3:5] == ("blue", "25") for a in backend.actions), backend.actions
    # The bad version got about its weight of the calls, bounded by twice that.
    # The step put 10 % of the pods on the bad version; which of the 32 connections drew it is random (the
    # share test's sigma): the share of calls it got is bounded by the weight + 3 sigma of 32 picks (26 %).
    assert bad_calls > 0 and bad_share is not None and bad_share < BAD_SHARE_BOUND, figures
    # Failures only from calls that started before the bad version was gone, and after that none.
    assert failed(bad_gone, float("inf")) == [], [(r.index, r.error) for r in failed(bad_gone, float("inf"))]
    assert all("INTERNAL" in r.error for r in report.failed), [r.error for r in report.failed][:5]
    # (c) promoted after a successful pre-promotion analysis, undone back to green 2; the preview served.
    assert promoted.promoted and promoted.phase == "Progressing", promoted.message  # green kept warm for undo
    assert undone.phase == "RolledBack", undone.message
    assert backend.view("payments").active == "green" and backend.view("payments").colors["green"].tag == "2"
    assert sum(preview_reads.report.failed.values()) == 0 and preview_reads.report.answered > 0
    # Exactly once, and the ledger balances (the failed calls of the bad version wrote nothing).
    by_description = Counter(description for _, description in rows)
    assert [d for d, n in by_description.items() if n > 1] == [], "payments doubled"
    assert {(r.payment_id, r.description) for r in report.acknowledged} == set(rows)
    assert all(total == 0 for total in totals.values()), f"ledger does not sum to zero: {totals}"
