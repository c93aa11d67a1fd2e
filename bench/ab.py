"""A change measured against a base commit in the same run: two real meshes, rounds alternating between them.

    python -m bench.ab --base 602ee7a [--rounds 4] [--seconds 5] [--concurrency 48]

The base is the commit's tree (`git archive`) in a temporary directory, put
first on the services' PYTHONPATH, so its mesh runs that commit's services
while this one runs the working tree; both are the same set-up as bench.mesh's
"real traced" (SQLite, auth on, tracing at 100%, bench payers as test
accounts). On a shared machine the rates drift with the neighbours' load, so
the figures are medians of alternating rounds and each process's CPU time per
answered payment, which moves far less. Never passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.mesh import RealMesh, Target, Usage, closed_round, load_average

ROOT = Path(__file__).resolve().parent.parent
# Where the finmesh namespace's portions live in a tree (as the editable install lists them).
PORTIONS = [
    "libs/contracts",
    "libs/platform",
    "services/identity",
    "services/notify",
    "services/payments",
    "services/risk",
    "tools",
]


def unpack(commit: str, into: Path) -> str:
    """`commit`'s tree under `into`; returns the PYTHONPATH that makes its services the ones imported."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return os.pathsep.join(str(into / portion) for portion in PORTIONS)


async def start(label: str, pythonpath: str | None) -> RealMesh:
    """A traced SQLite mesh; with `pythonpath`, its processes import the base tree first."""
    previous = os.environ.get("PYTHONPATH")
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        return await RealMesh(label, True, "sqlite").start(3)
    finally:
        if pythonpath:
            if previous is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = previous


async def measure(args: argparse.Namespace) -> None:
    print(f"load average at start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="finmesh-ab-") as tmp:
        base_path = unpack(args.base, Path(tmp))
        meshes: dict[str, RealMesh] = {}
        try:
            meshes[f"base {args.base}"] = await start("base", base_path)
            meshes["working tree"] = await start("work", None)
            targets = {name: Target(name, mesh.target, mesh.payers, mesh.pids) for name, mesh in meshes.items()}
            usage = {name: Usage() for name in targets}
            results: dict[str, list] = {name: [] for name in targets}
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for name in order:
                    results[name].append(
                        await closed_round(targets[name], args.concurrency, args.seconds, 1.0, usage[name])
                    )
                print(
                    f"round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{n} {results[n][-1].throughput:.0f}/s" for n in targets)
                    + f"; load {load_average()}",
                    flush=True,
                )
            print(
                f"\nclosed loop, {args.concurrency} concurrent, {args.rounds} x {args.seconds:g} s (medians); "
                "CPU ms per answered payment by process:"
            )
            totals = {}
            for name, rounds in results.items():
                cpu = {process: statistics.median(ms) for process, ms in usage[name].cpu_ms.items()}
                totals[name] = sum(cpu.values())
                rate = statistics.median(x.throughput for x in rounds)
                p50 = statistics.median(x.percentile_ms(50) for x in rounds)
                p99 = statistics.median(x.percentile_ms(99) for x in rounds)
                print(
                    f"  {name:<22}{rate:>6.0f}/s  p50 {p50:>5.0f} ms  p99 {p99:>5.0f} ms  "
                    + "  ".join(f"{p} {v:.2f}" for p, v in cpu.items())
                    + f"  = {totals[name]:.2f}"
                )
            base, work = totals.values()
            print(f"  CPU per payment, working tree / base: {work / base:.2f}")
        finally:
            for mesh in meshes.values():
                await mesh.stop()
    print(f"load average at end: {load_average()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="commit to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=48)
    asyncio.run(measure(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
