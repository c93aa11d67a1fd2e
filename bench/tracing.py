"""Cost of tracing: a 3-hop no-op gRPC chain with tracing off vs on (100% sampling), same run.

`python -m bench.tracing [--rounds N] [--seconds S] [--concurrency C]`

Both chains (3 processes each) run side by side; rounds alternate off/on so
machine drift hits both alike. Reported: median throughput per mode and the
ratio on/off, plus p50/p99 latency.
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


def start_chain(tracing: bool, span_dir: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    """Start hops leaf-first; return the processes and the entry target."""
    env = {**os.environ, "FINMESH_TRACING_ENABLED": "true" if tracing else "false",
           "OTEL_TRACES_SAMPLER": "always_on"}
    processes: list[subprocess.Popen[bytes]] = []
    next_target = ""
    for i in range(HOPS):
        port = free_port()
        hop_env = {**env, "FINMESH_SPAN_FILE": str(span_dir / f"hop{i}.jsonl") if tracing else ""}
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
    results: dict[str, list[Round]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        chains = {mode: start_chain(mode == "on", Path(tmp)) for mode in ("off", "on")}
        try:
            for i in range(rounds):
                order = ("off", "on") if i % 2 == 0 else ("on", "off")
                for mode in order:
                    r = await measure(chains[mode][1], seconds, concurrency)
                    results[mode].append(r)
                    print(f"  round {i + 1} tracing {mode:>3}: {r.rate:8.0f} calls/s  p99 {r.percentile(99):6.2f} ms"
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
    on = median([r.rate for r in results["on"]])
    print(f"\n{HOPS}-hop no-op chain, closed loop, concurrency {concurrency}, medians of {len(results['off'])} rounds")
    for mode in ("off", "on"):
        rs = results[mode]
        p50 = median([r.percentile(50) for r in rs])
        p99 = median([r.percentile(99) for r in rs])
        print(f"  tracing {mode:>3}: {median([r.rate for r in rs]):8.0f} calls/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(f"  throughput ratio on/off: {on / off:.2f}  (tracing costs {100 * (1 - on / off):.0f}% of throughput)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    report(asyncio.run(run(args.rounds, args.seconds, args.concurrency)), args.concurrency)


if __name__ == "__main__":
    main()
