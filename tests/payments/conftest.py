"""Payments fixtures: the fake bank, a real HTTP server on an ephemeral port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from finmesh.fakes.bank import FakeBank


@pytest.fixture
def bank() -> Iterator[FakeBank]:
    """A fake bank on an ephemeral port; replies it was told to delay wait 1.5 s (longer than the adapter's timeout)."""
    with FakeBank(reply_delay=1.5) as fake:
        yield fake
