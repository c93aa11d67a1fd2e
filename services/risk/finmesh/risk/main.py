"""Entry point of the risk process."""

from __future__ import annotations

from finmesh.platform.config import ServiceSettings
from finmesh.platform.runner import run_service
from finmesh.risk.app import build


def main() -> None:
    settings = ServiceSettings()
    run_service("risk", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
