"""Entry point of the notify process."""

from __future__ import annotations

from finmesh.notify.app import build
from finmesh.notify.config import NotifySettings
from finmesh.platform.runner import run_service


def main() -> None:
    # Loaded (and validated) once at start: a bad channel setting stops the process before it serves.
    settings = NotifySettings()
    run_service("notify", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
