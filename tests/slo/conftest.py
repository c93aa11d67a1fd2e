"""SLO rule checks: promtool (Debian's prometheus package, `make prometheus-tools`), found once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.prometheus import binary


@pytest.fixture(scope="session")
def promtool() -> Path:
    return binary("promtool")
