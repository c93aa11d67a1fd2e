"""`make bench`: every benchmark in turn, each printing its figures beside its own same-run baseline."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

# Each entry is a module under bench/ with a main(); missing ones are reported, not fatal.
BENCHMARKS = [
    "bench.tracing",
    "bench.fields",
    "bench.ledger",
    "bench.poisoned",
    "bench.risk",
    "bench.mesh",
    "bench.metrics",
    "bench.ratelimit",
    "bench.events",
]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        if importlib.util.find_spec(name) is None:
            print(f"== {name}: not present, skipped")
            continue
        print(f"== {name}", flush=True)
        if subprocess.call([sys.executable, "-m", name]) != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
