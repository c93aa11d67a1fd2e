"""Runs helm and kubectl: every call with a timeout, every call logged, port-forwards cleaned up."""

from __future__ import annotations

import collections
import contextlib
import json
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# kubectl port-forward prints this once the listener is up.
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


class CommandFailed(Exception):
    """A command exited non-zero, timed out or could not start."""

    def __init__(self, argv: tuple[str, ...], reason: str) -> None:
        super().__init__(f"{shlex.join(argv)}: {reason}")
        self.argv = argv
        self.reason = reason


class Runner:
    """Runs commands for the driver; `log` receives one line per command and outcome."""

    def __init__(self, log: Callable[[str], None], *, default_timeout: float = 120.0) -> None:
        self._log = log
        self._default_timeout = default_timeout

    def run(self, argv: tuple[str, ...], *, timeout: float | None = None, stdin: str | None = None) -> str:
        """Run argv to completion (`stdin` fed to it, never logged) and return its stdout; CommandFailed on failure."""
        timeout = timeout or self._default_timeout
        self._log(f"$ {shlex.join(argv)}")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, input=stdin)
        except FileNotFoundError as error:
            raise CommandFailed(argv, f"not found ({error.filename})") from error
        except subprocess.TimeoutExpired as error:
            raise CommandFailed(argv, f"timed out after {timeout:g}s") from error
        if proc.returncode != 0:
            # helm and kubectl explain themselves on stderr; the last lines are the useful ones.
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise CommandFailed(argv, f"exit {proc.returncode}: {tail}")
        return proc.stdout

    def run_json(self, argv: tuple[str, ...], *, timeout: float | None = None, stdin: str | None = None) -> Any:
        out = self.run(argv, timeout=timeout, stdin=stdin)
        try:
            return json.loads(out or "null")
        except json.JSONDecodeError as error:
            raise CommandFailed(argv, f"did not print JSON: {error}") from error

    @contextmanager
    def port_forward(self, argv: tuple[str, ...], *, timeout: float = 20.0) -> Iterator[int]:
        """Run `kubectl port-forward` for the duration of the block; yields the local port it chose."""
        self._log(f"$ {shlex.join(argv)} &")
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except FileNotFoundError as error:
            raise CommandFailed(argv, f"not found ({error.filename})") from error
        try:
            yield _wait_for_port(proc, argv, timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_port(proc: subprocess.Popen[str], argv: tuple[str, ...], timeout: float) -> int:
    """Read port-forward's output until it names its local port.

    Both pipes are read by threads for the whole life of the process: kubectl
    prints a line per forwarded connection, and a full pipe would stall it.
    """
    found: list[int] = []
    errors: collections.deque[str] = collections.deque(maxlen=3)
    ready = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = _FORWARDING.search(line)
            if match and not found:
                found.append(int(match.group(1)))
                ready.set()
        ready.set()  # stdout closed: the process ended

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            errors.append(line.strip())

    threading.Thread(target=read_stdout, daemon=True).start()
    stderr_reader = threading.Thread(target=read_stderr, daemon=True)
    stderr_reader.start()
    ready.wait(timeout)
    if found:
        return found[0]
    if ready.is_set():
        # stdout closed before the process was reaped: without this wait a kubectl that just failed read as
        # one still starting, and its reason (on stderr) was lost.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    if proc.poll() is not None:
        stderr_reader.join(2)  # its last words are the reason
        raise CommandFailed(argv, f"exit {proc.returncode}: {' | '.join(errors)}")
    raise CommandFailed(argv, f"no 'Forwarding from' line within {timeout:g}s")
