"""What a load result must carry to be read on another machine: which code ran (commit, dirty tree, version),
where (host, cores, load average at start and end) and on what (Python, grpcio).

A figure from a 2-core laptop at load 12 and one from an idle 16-core server differ by the machine more than by
the code; `finmesh load --compare` (finmesh.load.compare) says so when two results' machines or commits differ.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import grpc

_GIT_TIMEOUT_S = 5.0
_SOURCE = Path(__file__).resolve().parent  # the checkout the harness runs from (an editable install)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS keeps none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_revision() -> dict[str, Any]:
    """The commit the harness's checkout is at and whether tracked files differ from it (None, None: not a git
    checkout, e.g. an installed wheel)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (a container's cpuset)
    except (AttributeError, OSError):
        return None


def machine_facts() -> dict[str, Any]:
    """The run's `machine` section, taken at the start; `finish` adds the load average at the end."""
    return {
        **source_revision(),
        "finmesh_version": _version("finmesh"),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": _usable_cores(),
        "load_average": {"start": load_average(), "end": None},
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(terse=True),
    }


def finish(facts: dict[str, Any]) -> dict[str, Any]:
    """`facts` with the load average at the end of the run."""
    return {**facts, "load_average": {**facts["load_average"], "end": load_average()}}
