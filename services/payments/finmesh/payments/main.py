"""Entry point of the payments process."""

from __future__ import annotations

from finmesh.payments.app import build
from finmesh.payments.config import PaymentsSettings
from finmesh.platform.runner import migrate_requested, run_migrate, run_service


def main(argv: list[str] | None = None) -> None:
    if migrate_requested("payments", argv):
        raise SystemExit(run_migrate("payments"))
    settings = PaymentsSettings()
    run_service("payments", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
