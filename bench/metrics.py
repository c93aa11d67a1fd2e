"""What metrics cost on the payment path: the same mesh with metrics on and off, measured in the same run.

    python -m bench.metrics [--rounds 10] [--seconds 4] [--concurrency 48]

Four set-ups, all traced at 100%: the real mesh (bench.mesh's "real traced": SQLite, auth on, bench payers as
test accounts) and the no-op chain (finmesh.load.noop), each once as the services run by default (metrics on:
RPC histograms on every server and mesh client, the services' own counters and gauges, /metrics served) and
once with FINMESH_METRICS_ENABLED=false. Rounds alternate within each pair and reverse every other round; each
round starts once the machine is idle (bench.mesh.settle), so no set-up always runs against the work another
left behind. Figures: medians of the rates and of each process's CPU time per answered payment, which moves
far less than the rates on a shared machine; and the real / no-op ratio with tracing and metrics both on.
Never passes or fails on a time; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable

from bench.mesh import (
    BASE_ENV,
    Payer,
    RealMesh,
    Target,
    Usage,
    closed_round,
    load_average,
    med,
    noop_pids,
    settle,
)
from finmesh.load.engine import LoadResult
from finmesh.load.noop import NoopMesh

METRICS_OFF = {"FINMESH_METRICS_ENABLED": "false"}


async def measure(args: argparse.Namespace) -> None:
    print(f"load average at start: {load_average()}  (cores: {os.cpu_count()})", flush=True)
    real_on, real_off = RealMesh("metered", True, "sqlite"), RealMesh("unmetered", True, "sqlite", metrics=False)
    noop_on = NoopMesh(tracing=True, extra_env=BASE_ENV)
    noop_off = NoopMesh(tracing=True, extra_env={**BASE_ENV, **METRICS_OFF})
    try:
        await asyncio.gather(real_on.start(args.payers), real_off.start(args.payers))
        for noop in (noop_on, noop_off):
            await noop.__aenter__()
        targets = [
            Target("real, metrics on", real_on.target, real_on.payers, real_on.pids),
            Target("real, metrics off", real_off.target, real_off.payers, real_off.pids),
            Target("no-op, metrics on", noop_on.target, [Payer("a", "b", noop_on.metadata())], _pids(noop_on)),
            Target("no-op, metrics off", noop_off.target, [Payer("a", "b", noop_off.metadata())], _pids(noop_off)),
        ]
        results: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
        usage = {t.name: Usage() for t in targets}
        for r in range(args.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            for target in order:
                await settle()
                results[target.name].append(
                    await closed_round(target, args.concurrency, args.seconds, 1.0, usage[target.name])
                )
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{name} {runs[-1].throughput:.0f}/s" for name, runs in results.items())
                + f"; load {load_average()}",
                flush=True,
            )
        report(args, results, usage)
    finally:
        for mesh in (real_on, real_off):
            await mesh.stop()
        for noop in (noop_on, noop_off):
            await noop.__aexit__(None, None, None)
        print(f"\nload average at end: {load_average()}")


def _pids(noop: NoopMesh) -> Callable[[], dict[str, int]]:
    return lambda: noop_pids(noop)


def report(args: argparse.Namespace, results: dict[str, list[LoadResult]], usage: dict[str, Usage]) -> None:
    rate = {name: med([r.throughput for r in runs]) for name, runs in results.items()}
    cpu = {name: sum(med(ms) for ms in used.cpu_ms.values()) for name, used in usage.items()}
    print()
    print(f"closed loop, {args.concurrency} concurrent, {args.rounds} x {args.seconds:g} s rounds (medians):")
    for name, runs in results.items():
        processes = "  ".join(f"{p} {med(ms):.2f}" for p, ms in usage[name].cpu_ms.items())
        print(
            f"  {name:<20}{rate[name]:>6.0f}/s  p50 {med([r.percentile_ms(50) for r in runs]):>6.1f} ms  "
            f"p99 {med([r.percentile_ms(99) for r in runs]):>6.1f} ms  CPU ms per payment: {processes} "
            f"= {cpu[name]:.2f}"
        )
    for path in ("real", "no-op"):
        on, off = f"{path}, metrics on", f"{path}, metrics off"
        print(
            f"  metrics on the {path} path: throughput {rate[on] / rate[off] - 1:+.1%}, CPU per payment "
            f"{cpu[on] - cpu[off]:+.3f} ms ({cpu[on] / cpu[off] - 1:+.1%})"
        )
    print(
        "  real / no-op, tracing and metrics both on: "
        f"{rate['real, metrics on'] / rate['no-op, metrics on']:.2f} (throughput), "
        f"{cpu['no-op, metrics on'] / cpu['real, metrics on']:.2f} (CPU per payment, no-op / real)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--payers", type=int, default=3)
    asyncio.run(measure(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
