"""Password guessing is slowed, never turned into a lockout (issue 16): the throttle's rules, free of I/O.

Two scopes:

- **(account, client address).** The first `free_failures` wrong passwords from one address cost
  nothing; after that each failure makes the address wait twice as long as the one before
  (`base_delay`, 2x, 4x, ... up to `max_delay`) before its next attempt. A right password (or a
  completed login) from that address starts it afresh. An attacker slows down only themselves.
- **The account, all addresses.** Past `account_failures` failures within the window, the account
  is under a global throttle. It does not refuse anyone: addresses the owner has completed a login
  from lately go on as before, and every other address gets a login challenge *whatever the
  password*, the password's verdict held until the second factor (SMS code or TOTP) is shown. The
  owner, phone or authenticator in hand, gets in; a guesser elsewhere learns nothing from a guess,
  right or wrong, so spreading guesses over many addresses stops paying.

The counts come from the attempts identity records (store.login_attempts), so every replica sees the
same history and a restart forgets nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from finmesh.platform.backoff import Backoff

# Outcomes of a recorded attempt.
FAILED = "FAILED"  # wrong password (an attempt counts as this until its password is verified)
PASSED = "PASSED"  # right password, challenge issued
HELD = "HELD"  # right password under the global throttle: verdict held for the second factor
COMPLETED = "COMPLETED"  # second factor passed, tokens issued
# HELD counts as a failure: it must look like one to whoever is guessing, delays included.
COUNTED = (FAILED, HELD)
_RESETS = (PASSED, COMPLETED)


@dataclass(frozen=True)
class Policy:
    free_failures: int
    base_delay: float
    max_delay: float
    account_failures: int


@dataclass(frozen=True)
class History:
    address_failures: int  # from this address since its last success, within the window
    last_failure_at: datetime | None
    account_failures: int  # from every address, within the window
    known_address: bool  # the owner completed a login from this address lately


@dataclass(frozen=True)
class Verdict:
    wait: float  # seconds this address must still wait; 0: it may try now
    hold: bool  # the password's verdict waits for the second factor


def backoff(failures: int, policy: Policy) -> float:
    """The wait after the `failures`-th failure in a row from one address (no jitter: the throttle is a rule the
    client can be told, and RetryInfo tells it)."""
    if failures < policy.free_failures:
        return 0.0
    return Backoff(policy.base_delay, policy.max_delay).ceiling(failures - policy.free_failures)


def address_failures(attempts: Iterable[tuple[str, datetime]]) -> tuple[int, datetime | None]:
    """Failures since the last success, and when the latest was, from (outcome, at) in time order."""
    count, last = 0, None
    for outcome, at in attempts:
        if outcome in _RESETS:
            count, last = 0, None
        elif outcome in COUNTED:
            count, last = count + 1, at
    return count, last


def judge(history: History, policy: Policy, now: datetime) -> Verdict:
    wait = 0.0
    if history.last_failure_at is not None:
        allowed_at = history.last_failure_at.timestamp() + backoff(history.address_failures, policy)
        wait = max(0.0, allowed_at - now.timestamp())
    hold = not history.known_address and history.account_failures >= policy.account_failures
    return Verdict(wait, hold)
