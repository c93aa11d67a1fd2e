"""`finmesh up` as a developer runs it (`make run`), in a child process, with its output read line by line.

The e2e tests that need the runner itself (restarts, what it prints) drive it through this; tests that only
need the four processes use `finmesh.cli.mesh.Mesh` directly (tests/e2e/test_slice_processes.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# "  payments  127.0.0.1:41234   pid 5678   metrics: http://127.0.0.1:41240/metrics   log: ..." as
# `finmesh up` lists each service when ready; identity's line ends "   jwks: http://127.0.0.1:41250/...".
_SERVICE_LINE = re.compile(
    r"^\s+(identity|payments|risk|notify)\s+(\S+:\d+)\s+pid (\d+)(?:\s+metrics: (\S+))?(?:.*\s+jwks: (\S+))?"
)


@dataclass
class Service:
    target: str
    pid: int
    metrics: str = ""  # its /metrics URL
    jwks: str = ""  # identity's JWKS URL


class FinmeshUp:
    """The `finmesh up` command on free ports in `data_dir`; `flags` go after `up`."""

    def __init__(self, data_dir: Path, *flags: str) -> None:
        self.data_dir = data_dir
        self.output: list[str] = []
        self.services: dict[str, Service] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False  # the reader's end-of-output marker was taken from the queue
        self.process = subprocess.Popen(
            [sys.executable, "-m", "finmesh.cli.main", "--data-dir", str(data_dir), "--base-port", "0", "up", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line from here on that matches `pattern`; fails, showing the output, at EOF or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; output:\n" + "\n".join(self.output)
                ) from None
            if line is None:
                self._ended = True
                raise AssertionError(
                    f"`finmesh up` ended (exit {self.process.wait()}) before a line matching "
                    f"{pattern!r}; output:\n" + "\n".join(self.output)
                )
            self.output.append(line)
            if (service := _SERVICE_LINE.match(line)) is not None:
                self.services[service[1]] = Service(service[2], int(service[3]), service[4] or "", service[5] or "")
            if (match := re.search(pattern, line)) is not None:
                return match

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Service]:
        self.expect(r"^ready\.", timeout)
        return self.services

    def targets(self) -> dict[str, str]:
        return {name: service.target for name, service in self.services.items()}

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once the output is read to its end."""
        code = self.process.wait(timeout)
        while not self._ended:
            if (line := self._lines.get(timeout=timeout)) is None:
                self._ended = True
            else:
                self.output.append(line)
        return code

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C, as a developer stops the mesh; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def close(self) -> None:
        """Leave nothing behind, whatever the test did: Ctrl-C, else kill the runner and its services."""
        try:
            self.interrupt()
        except subprocess.TimeoutExpired:
            self.process.kill()
            for service in self.services.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(service.pid, signal.SIGKILL)
