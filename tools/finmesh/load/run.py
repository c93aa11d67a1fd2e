"""One load run: channels to the targets, the scenario's call, the engine, and the result document.

The result document is the run's JSON: what ran (`run`), where and from which code (`machine`, see
finmesh.load.machine), this run's figures at the top level (see LoadResult.to_dict), and, when the no-op baseline
was measured in the same run, its figures and the ratios.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.load import engine, scenarios
from finmesh.load.accounts import TestAccounts
from finmesh.load.engine import LoadResult, Progress
from finmesh.load.report import render
from finmesh.load.target import Endpoint
from finmesh.payments.v1 import payments_service_pb2_grpc as pay_grpc

RESULT_FILE = "result.json"
REPORT_FILE = "report.html"
# Figures a ratio to the baseline is given for: latencies (run ÷ baseline, >1 is slower) and throughput.
RATIO_FIGURES = ("p50", "p90", "p99", "p99_9", "max")


@dataclass(frozen=True)
class Plan:
    scenario: str = "payment"
    mix: str = "payment=8,balance=2,registration=1"
    mode: str = "open"  # "open" (constant rate) or "closed" (fixed concurrency)
    rate: float = 100.0
    concurrency: int = 16
    duration_s: float | None = 10.0
    count: int | None = None
    warmup_s: float = 2.0
    max_in_flight: int = 10_000
    connections: int = 1
    timeout_s: float = 10.0

    def describe(self) -> dict[str, Any]:
        shown = asdict(self)
        if self.scenario != "mix":
            shown.pop("mix")
        shown.pop("rate" if self.mode == "closed" else "concurrency")
        return shown


async def run_load(
    plan: Plan,
    *,
    payments: Endpoint | None = None,
    identity: Endpoint | None = None,
    accounts: TestAccounts | None = None,
    progress: Progress | None = None,
) -> LoadResult:
    """Run `plan` against the endpoints; every call carries the synthetic mark (and the token, if any)."""
    metadata = (payments or identity or Endpoint("")).metadata()
    channels: list[grpc.aio.Channel] = []
    ctx = scenarios.Context(metadata=metadata, accounts=accounts, timeout_s=plan.timeout_s)
    try:
        for _ in range(max(1, plan.connections)):
            if payments is not None:
                channels.append(payments.channel())
                ctx.payments.append(pay_grpc.PaymentsServiceStub(channels[-1]))
            if identity is not None:
                channels.append(identity.channel())
                ctx.identity.append(id_grpc.IdentityServiceStub(channels[-1]))
        call = scenarios.build(plan.scenario, ctx, plan.mix)
        label = scenarios.labeler(plan.scenario, plan.mix)
        if plan.mode == "closed":
            return await engine.closed_loop(
                call,
                concurrency=plan.concurrency,
                duration_s=plan.duration_s,
                count=plan.count,
                warmup_s=plan.warmup_s,
                progress=progress,
                label=label,
            )
        return await engine.open_loop(
            call,
            rate=plan.rate,
            duration_s=plan.duration_s,
            count=plan.count,
            warmup_s=plan.warmup_s,
            max_in_flight=plan.max_in_flight,
            progress=progress,
            label=label,
        )
    finally:
        for channel in channels:
            await channel.close()


def ratios(result: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """Run ÷ baseline: latencies (>1: slower than bare Python gRPC over the same hops) and throughput (<1)."""
    out: dict[str, float] = {}
    for name in RATIO_FIGURES:
        base = baseline["latency_ms"][name]
        if base > 0:
            out[f"latency_{name}"] = round(result["latency_ms"][name] / base, 3)
    if baseline["throughput"] > 0:
        out["throughput"] = round(result["throughput"] / baseline["throughput"], 3)
    return out


def result_document(
    plan: Plan,
    target: str,
    result: LoadResult,
    baseline: LoadResult | None = None,
    started_at: float | None = None,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    when = datetime.fromtimestamp(started_at or time.time(), UTC).isoformat(timespec="seconds")
    doc: dict[str, Any] = {"run": {"target": target, "started_at": when, **plan.describe()}}
    if machine is not None:
        doc["machine"] = machine
    doc.update(result.to_dict())
    if baseline is not None:
        doc["baseline"] = baseline.to_dict()
        doc["ratio_to_baseline"] = ratios(doc, doc["baseline"])
    return doc


def write_outputs(doc: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path, report_path = out_dir / RESULT_FILE, out_dir / REPORT_FILE
    result_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    report_path.write_text(render(doc), encoding="utf-8")
    return result_path, report_path


def summary(doc: dict[str, Any]) -> str:
    lat = doc["latency_ms"]
    line = (
        f"{doc['calls']} calls, {doc['ok']} ok, {doc['error_count']} errors in {doc['elapsed_s']:.2f}s: "
        f"{doc['throughput']:.1f} ok/s; p50 {lat['p50']:.2f} p90 {lat['p90']:.2f} p99 {lat['p99']:.2f} "
        f"p99.9 {lat['p99_9']:.2f} max {lat['max']:.2f} ms"
    )
    if doc["errors"]:
        line += "; errors: " + ", ".join(f"{k}={v}" for k, v in doc["errors"].items())
    if doc["late_sends"]:
        line += f"; {doc['late_sends']} late sends (the harness fell behind; latencies still count from schedule)"
    for name, part in doc.get("by_label", {}).items():
        lat = part["latency_ms"]
        errors = sum(part["errors"].values())
        line += (
            f"\n  {name}: {part['calls']} calls, {part['ok']} ok, {errors} errors; "
            f"p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f} ms"
        )
    if "ratio_to_baseline" in doc:
        r = doc["ratio_to_baseline"]
        line += "\nvs no-op baseline (same run): " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items())
    return line
