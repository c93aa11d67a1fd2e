"""Entry point of the notify process."""

from __future__ import annotations

from finmesh.notify.app import build
from finmesh.platform.config import ServiceSettings
from finmesh.platform.runner import run_service


def main() -> None:
    settings = ServiceSettings()
    run_service("notify", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
