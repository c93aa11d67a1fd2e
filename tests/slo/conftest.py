"""SLO rule checks: promtool (Debian's prometheus package, `make prometheus-tools`), found once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NoReturn

import pytest

_skip_reasons: list[str] = []


def in_ci() -> bool:
    """CI sets CI=true: there a missing tool is a failure, never a skip."""
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the rule checks must run)", pytrace=False)
    if reason not in _skip_reasons:
        _skip_reasons.append(reason)
    pytest.skip(reason)


def find_promtool() -> Path | None:
    """promtool on PATH, or where Debian's package puts it (PATH may lack /usr/bin in a trimmed shell)."""
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    return Path(found) if found else None


@pytest.fixture(scope="session")
def promtool() -> Path:
    found = find_promtool()
    if found is None:
        _unavailable("promtool is not installed (run `make prometheus-tools`: Debian's prometheus package)")
    return found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print why rule checks were skipped, even under -q."""
    for reason in _skip_reasons:
        terminalreporter.write_line(f"tests/slo skipped: {reason}", yellow=True)
