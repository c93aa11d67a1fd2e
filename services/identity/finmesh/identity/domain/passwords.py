"""The password rule, one for registration and login, so both answer the same bound in the same words."""

from __future__ import annotations

MIN_LENGTH = 10
# Argon2 takes any length, but hashing megabytes per guess is a gift to a flood; 128 characters is
# room for any passphrase. Login refuses the same bound, so no password that could exist is refused there.
MAX_LENGTH = 128


def problem_with_new(password: str) -> str | None:
    """What is wrong with a password being chosen, or None."""
    if len(password) < MIN_LENGTH:
        return f"too short: at least {MIN_LENGTH} characters"
    return _too_long(password)


def problem_with_given(password: str) -> str | None:
    """What is wrong with a password presented at login, or None (its strength was judged when chosen)."""
    if not password:
        return "required"
    return _too_long(password)


def _too_long(password: str) -> str | None:
    return f"too long: at most {MAX_LENGTH} characters" if len(password) > MAX_LENGTH else None
