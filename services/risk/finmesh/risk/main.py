"""Entry point of the risk process."""

from __future__ import annotations

from finmesh.platform.config import ServiceSettings
from finmesh.platform.runner import migrate_requested, run_migrate, run_service
from finmesh.risk.app import build


def main(argv: list[str] | None = None) -> None:
    if migrate_requested("risk", argv):
        raise SystemExit(run_migrate("risk"))
    settings = ServiceSettings()
    run_service("risk", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
