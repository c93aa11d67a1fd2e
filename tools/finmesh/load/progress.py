"""The live progress line on stderr: rewritten in place on a terminal, one line per update otherwise (CI logs)."""

from __future__ import annotations

import sys
from typing import TextIO

from finmesh.load.engine import Snapshot


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, label: str = "") -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.in_place = self.stream.isatty()
        self._width = 0

    def __call__(self, snap: Snapshot) -> None:
        if snap.phase == "warmup":
            text = f"{self.label}warm-up {-snap.elapsed_s:4.1f}s left  in flight {snap.in_flight}"
        else:
            rate = snap.ok / snap.elapsed_s if snap.elapsed_s > 0 else 0.0
            text = (
                f"{self.label}{snap.elapsed_s:6.1f}s  {rate:8.1f} ok/s  ok {snap.ok}  errors {snap.errors}  "
                f"in flight {snap.in_flight}  p99 {snap.p99_ms:.1f} ms  late sends {snap.late_sends}"
            )
        if self.in_place:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.in_place and self._width:
            self.stream.write("\n")
            self.stream.flush()
