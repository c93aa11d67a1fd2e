"""Downstream deadlines: what a handler passes on of its caller's remaining time."""

from __future__ import annotations

import pytest

from finmesh.platform.rpc.channels import remaining_timeout


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [
        (None, 2.0),  # no caller deadline: our own default
        (10.0, 2.0),  # plenty left: capped at the default
        (0.3, 0.225),  # a quarter kept for the reply (e.g. committing a hold after risk timed out)
        (0.1, 0.05),  # at least 50 ms kept
        (1.6, 1.35),  # at most 250 ms kept
        (0.02, 0.001),  # nothing left: fail fast downstream, never a negative timeout
    ],
)
def test_the_downstream_call_leaves_the_caller_time_for_the_reply(remaining, expected) -> None:
    assert remaining_timeout(_Context(remaining), 2.0) == pytest.approx(expected)


def test_without_a_context_the_default_applies() -> None:
    assert remaining_timeout(None, 1.5) == 1.5
