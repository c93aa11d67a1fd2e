"""Cost of tracing: a 3-hop no-op gRPC chain with tracing off vs on (100% sampling), same run.

`python -m bench.tracing [--rounds N] [--seconds S] [--concurrency C]`

Three chains (3 processes each) run side by side: tracing off, the
platform's lean tracing (what the services run), and the stock
opentelemetry-instrumentation-grpc interceptors for reference. Rounds rotate
the order so machine drift hits all alike. Reported: median throughput per
mode, its ratio to "off", and p50/p99 latency. Spans are exported to JSONL
files, as in a local run.
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


def start_chain(mode: str, span_dir: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Start hops leaf-first; return the processes and the entry target."""
    env = {**os.environ, "BENCH_TRACING": mode, "OTEL_TRACES_SAMPLER": "always_on"}
    processes: list[subprocess.Popen[bytes]] = []
    next_target = ""
    for i in range(HOPS):
        port = free_port()
        hop_env = {**env, "FINMESH_SPAN_FILE": str(span_dir / f"{mode}-hop{i}.jsonl")}
        proc = subprocess.Popen([sys.executable, "-m", "bench.chain", str(port), next_target], env=hop_env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        processes.append(proc)
        next_target = f"127.0.0.1:{port}"
    return processes, next_target


async def measure(target: str, seconds: float, concurrency: int) -> Round:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)
        await closed_loop(lambda: call(b"x", timeout=5), concurrency=concurrency, seconds=0.5)  # warm-up
        return await closed_loop(lambda: call(b"x", timeout=5), concurrency=concurrency, seconds=seconds)


async def run(rounds: int, seconds: float, concurrency: int) -> dict[str, list[Round]]:
    results: dict[str, list[Round]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        chains = {mode: start_chain(mode, Path(tmp)) for mode in MODES}
        try:
            for i in range(rounds):
                order = MODES[i % len(MODES):] + MODES[:i % len(MODES)]
                for mode in order:
                    r = await measure(chains[mode][1], seconds, concurrency)
                    results[mode].append(r)
                    print(f"  round {i + 1} tracing {mode:>5}: {r.rate:8.0f} calls/s  p99 {r.percentile(99):6.2f} ms"
                          f"  errors {r.errors}", flush=True)
        finally:
            for processes, _ in chains.values():
                for proc in processes:
                    proc.terminate()
                for proc in processes:
                    proc.wait(10)
    return results


def report(results: dict[str, list[Round]], concurrency: int) -> None:
    off = median([r.rate for r in results["off"]])
    print(f"\n{HOPS}-hop no-op chain, closed loop, concurrency {concurrency}, medians of {len(results['off'])} rounds")
    for mode in MODES:
        rs = results[mode]
        rate = median([r.rate for r in rs])
        p50 = median([r.percentile(50) for r in rs])
        p99 = median([r.percentile(99) for r in rs])
        print(f"  tracing {mode:>5}: {rate:8.0f} calls/s  ratio to off {rate / off:4.2f}"
              f"  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    report(asyncio.run(run(args.rounds, args.seconds, args.concurrency)), args.concurrency)


if __name__ == "__main__":
    main()
