"""Entry point of the identity process."""

from __future__ import annotations

from finmesh.identity.app import build
from finmesh.identity.config import IdentitySettings
from finmesh.platform.runner import migrate_requested, run_migrate, run_service


def main(argv: list[str] | None = None) -> None:
    if migrate_requested("identity", argv):
        raise SystemExit(run_migrate("identity"))
    settings = IdentitySettings()
    run_service("identity", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
