"""The login throttle's rules and the client address, without a server."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finmesh.identity.api.client_address import client_address
from finmesh.identity.domain.login_throttle import (
    COMPLETED,
    FAILED,
    HELD,
    PASSED,
    History,
    Policy,
    address_failures,
    backoff,
    judge,
)

POLICY = Policy(free_failures=5, base_delay=1.0, max_delay=900.0, account_failures=20)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_delays_double_after_the_free_failures_up_to_the_cap() -> None:
    assert [backoff(n, POLICY) for n in range(1, 9)] == [0, 0, 0, 0, 1, 2, 4, 8]
    assert backoff(15, POLICY) == 900.0 and backoff(10**6, POLICY) == 900.0


def test_a_success_from_the_address_starts_its_count_afresh_and_held_counts_as_failed() -> None:
    t = [NOW + timedelta(seconds=i) for i in range(6)]
    assert address_failures([(FAILED, t[0]), (FAILED, t[1]), (PASSED, t[2]), (FAILED, t[3]), (HELD, t[4])]) == (2, t[4])
    assert address_failures([(FAILED, t[0]), (COMPLETED, t[1])]) == (0, None)


def test_judge_waits_from_the_last_failure_and_holds_only_for_new_addresses() -> None:
    slowed = judge(History(6, NOW - timedelta(seconds=0.5), 6, False), POLICY, NOW)
    assert slowed.wait == pytest.approx(1.5) and not slowed.hold
    assert judge(History(6, NOW - timedelta(seconds=3), 6, False), POLICY, NOW).wait == 0
    assert judge(History(0, None, 20, False), POLICY, NOW).hold
    assert not judge(History(0, None, 500, True), POLICY, NOW).hold  # the owner's own address


class _Context:
    def __init__(self, peer: str, forwarded: str | None = None) -> None:
        self._peer, self._forwarded = peer, forwarded

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Any:
        return (("x-forwarded-for", self._forwarded),) if self._forwarded is not None else ()


PROXY = [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("ipv4:203.0.113.9:5555", None, [], "203.0.113.9"),
        ("ipv6:%5B2001:db8:1:2:3:4:5:6%5D:5555", None, [], "2001:db8:1:2::/64"),  # one /64, one client
        ("ipv6:[::ffff:203.0.113.9]:5555", None, [], "203.0.113.9"),
        ("ipv4:203.0.113.9:5555", "198.51.100.1", [], "203.0.113.9"),  # header from an untrusted peer: ignored
        ("ipv4:10.1.2.3:5555", "198.51.100.1, 10.9.9.9", PROXY, "198.51.100.1"),  # trusted hops skipped
        ("ipv4:10.1.2.3:5555", "6.6.6.6, 198.51.100.1", PROXY, "198.51.100.1"),  # what the client wrote: not read
        ("ipv4:10.1.2.3:5555", "garbage, 10.9.9.9", PROXY, "10.9.9.9"),
        ("ipv4:10.1.2.3:5555", None, PROXY, "10.1.2.3"),
        ("unix:/tmp/socket", None, [], "unix:/tmp/socket"),
    ],
)
def test_client_address(peer: str, forwarded: str | None, trusted: list[Any], expected: str) -> None:
    assert client_address(_Context(peer, forwarded), trusted) == expected  # type: ignore[arg-type]
