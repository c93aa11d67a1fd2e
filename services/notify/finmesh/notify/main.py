"""Entry point of the notify process."""

from __future__ import annotations

from finmesh.notify.app import build
from finmesh.notify.config import NotifySettings
from finmesh.platform.runner import migrate_requested, run_migrate, run_service


def main(argv: list[str] | None = None) -> None:
    if migrate_requested("notify", argv):
        raise SystemExit(run_migrate("notify"))
    # Loaded (and validated) once at start: a bad channel setting stops the process before it serves.
    settings = NotifySettings()
    run_service("notify", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
