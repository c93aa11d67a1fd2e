"""Entry point of the identity process."""

from __future__ import annotations

from finmesh.identity.app import build
from finmesh.identity.config import IdentitySettings
from finmesh.platform.runner import run_service


def main() -> None:
    settings = IdentitySettings()
    run_service("identity", settings, lambda: build(settings))


if __name__ == "__main__":
    main()
