"""Cost of tracing: a 3-hop no-op gRPC chain with tracing off vs on (100% sampling), same run.

`python -m bench.tracing [--rounds N] [--seconds S] [--concurrency C] [--baseline REV]`

Three chains (3 processes each) run side by side: tracing off, the
platform's lean tracing (what the services run), and the stock
opentelemetry-instrumentation-grpc interceptors for reference. Rounds rotate
the order so machine drift hits all alike. Reported: median throughput per
mode, its ratio to "off", p50/p99 latency, and the chain's CPU time per call
(user + system of the three hop processes over the round: what tracing costs
per call, less sensitive to other load than throughput). Spans are exported to
JSONL files, as in a local run.

--baseline REV adds a fourth chain, "base": the lean tracing of
libs/platform as of git revision REV (e.g. HEAD~3), extracted with git archive
and put first on the hops' PYTHONPATH, so a change to the platform's tracing
is measured against what it replaces in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc

from bench.chain import METHOD
from bench.load import Round, closed_loop, median
from finmesh.cli.mesh import free_port

HOPS = 3


MODES = ("off", "lean", "stock")
_TICKS = os.sysconf("SC_CLK_TCK")


def start_chain(mode: str, span_dir: Path, baseline: Path | None = None) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Start hops leaf-first; return the processes and the entry target."""
    env = {**os.environ, "BENCH_TRACING": "lean" if mode == "base" else mode, "OTEL_TRACES_SAMPLER": "always_on"}
    if mode == "base" and baseline is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(baseline / "libs" / "platform"), os.environ.get("PYTHONPATH", "")])
        )
    processes: list[subprocess.Popen[bytes]] = []
    next_target = ""
    for i in range(HOPS):
        port = free_port()
        hop_env = {**env, "FINMESH_SPAN_FILE": str(span_dir / f"{mode}-hop{i}.jsonl")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.chain", str(port), next_target],
            env=hop_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        processes.append(proc)
        next_target = f"127.0.0.1:{port}"
    return processes, next_target


async def measure(
    target: str, seconds: float, concurrency: int, processes: list[subprocess.Popen[bytes]]
) -> tuple[Round, float]:
    """A round against the chain and the chain's CPU seconds per call in it (after the warm-up)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)  # raw bytes both ways
        await closed_loop(lambda: call(b"x", timeout=5), concurrency=concurrency, seconds=0.5)  # warm-up
        before = cpu_seconds(processes)
        r = await closed_loop(lambda: call(b"x", timeout=5), concurrency=concurrency, seconds=seconds)
        return r, (cpu_seconds(processes) - before) / max(1, r.calls + r.errors)


def cpu_seconds(processes: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU time the processes have used so far (Linux /proc)."""
    total = 0
    for proc in processes:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICKS


def extract_baseline(revision: str, into: Path) -> Path:
    """libs/platform as of `revision`, read from git without touching the working tree."""
    archive = subprocess.run(["git", "archive", revision, "libs/platform"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def run(
    rounds: int, seconds: float, concurrency: int, baseline: str = ""
) -> tuple[dict[str, list[Round]], dict[str, list[float]]]:
    modes = MODES + (("base",) if baseline else ())
    results: dict[str, list[Round]] = {mode: [] for mode in modes}
    cpu_per_call: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        base = extract_baseline(baseline, Path(tmp)) if baseline else None
        chains = {mode: start_chain(mode, Path(tmp), base) for mode in modes}
        try:
            for i in range(rounds):
                order = modes[i % len(modes) :] + modes[: i % len(modes)]
                for mode in order:
                    processes, target = chains[mode]
                    r, cpu = await measure(target, seconds, concurrency, processes)
                    results[mode].append(r)
                    cpu_per_call[mode].append(cpu)
                    print(
                        f"  round {i + 1} tracing {mode:>5}: {r.rate:8.0f} calls/s  p99 {r.percentile(99):6.2f} ms"
                        f"  CPU {cpu * 1e6:6.0f} us/call  errors {r.errors}",
                        flush=True,
                    )
        finally:
            for processes, _ in chains.values():
                for proc in processes:
                    proc.terminate()
                for proc in processes:
                    proc.wait(10)
    return results, cpu_per_call


def report(results: dict[str, list[Round]], cpu_per_call: dict[str, list[float]], concurrency: int) -> None:
    off = median([r.rate for r in results["off"]])
    cpu_off = median(cpu_per_call["off"])
    print(f"\n{HOPS}-hop no-op chain, closed loop, concurrency {concurrency}, medians of {len(results['off'])} rounds")
    for mode, rs in results.items():
        rate = median([r.rate for r in rs])
        p50 = median([r.percentile(50) for r in rs])
        p99 = median([r.percentile(99) for r in rs])
        cpu = median(cpu_per_call[mode])
        print(
            f"  tracing {mode:>5}: {rate:8.0f} calls/s  ratio to off {rate / off:4.2f}"
            f"  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  CPU {cpu * 1e6:5.0f} us/call"
            f" (tracing {(cpu - cpu_off) * 1e6 / HOPS:+4.0f} us per hop)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--baseline", default="", help="git revision whose libs/platform runs as chain 'base'")
    args = parser.parse_args()
    results, cpu_per_call = asyncio.run(run(args.rounds, args.seconds, args.concurrency, args.baseline))
    report(results, cpu_per_call, args.concurrency)


if __name__ == "__main__":
    main()
