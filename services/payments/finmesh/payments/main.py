"""Entry point of the payments process."""

from __future__ import annotations

from finmesh.payments.app import build
from finmesh.payments.config import PaymentsSettings
from finmesh.platform.runner import run_service


def main() -> None:
    settings = PaymentsSettings()
    run_service("payments", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
