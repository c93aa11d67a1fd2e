"""Card numbers (primary account numbers) in text: found in one place, then refused, masked or kept out of logs.

A PAN is 13 to 19 digits passing the Luhn check, written in one piece or in groups split by single spaces or
dashes ("4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111"). A run of groups longer than a card
number (a PAN followed by an expiry date, say) is searched for a stretch of whole groups that is one; a single
unbroken run of more than 19 digits is not a card number. Any Unicode decimal digit counts (full-width digits are
a card number all the same).

Users: finmesh.platform.rpc.field_rules (TOKEN fields refuse a PAN, FREE_TEXT fields store it masked) and
finmesh.platform.privacy.pii (log and span masking).
"""

from __future__ import annotations

import re

MIN_DIGITS, MAX_DIGITS = 13, 19

# Cheap first pass: thirteen digits with at most one separator between neighbours. Most text has none.
CANDIDATE = re.compile(r"\d(?:[ -]?\d){12}")
# A maximal run of digit groups joined by single separators.
_RUN = re.compile(r"(?<!\d)\d+(?:[ -]\d+)*")
_GROUP = re.compile(r"\d+")


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def find_pans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every card number in `text`, in order, not overlapping."""
    if CANDIDATE.search(text) is None:
        return []
    found = []
    for run in _RUN.finditer(text):
        if len(run.group()) < MIN_DIGITS:
            continue
        groups = [(g.start() + run.start(), g.end() + run.start()) for g in _GROUP.finditer(run.group())]
        first = 0
        while first < len(groups):
            end = _pan_from(text, groups, first)
            if end is None:
                first += 1
            else:
                found.append((groups[first][0], groups[end][1]))
                first = end + 1
    return found


def _pan_from(text: str, groups: list[tuple[int, int]], first: int) -> int | None:
    """The index of the last group of the shortest card number starting at group `first`, if any."""
    digits = ""
    for last in range(first, len(groups)):
        start, end = groups[last]
        digits += text[start:end]
        if len(digits) > MAX_DIGITS:
            return None
        if len(digits) >= MIN_DIGITS and luhn_ok(digits):
            return last
    return None


def contains_pan(text: str) -> bool:
    return bool(find_pans(text))


def mask_pans(text: str) -> str:
    """`text` with the digits of every card number but its last four replaced by "*" (separators kept)."""
    spans = find_pans(text)
    if not spans:
        return text
    parts = []
    done = 0
    for start, end in spans:
        number = text[start:end]
        keep_from = _index_of_last_digits(number, 4)
        masked = "".join("*" if char.isdigit() else char for char in number[:keep_from]) + number[keep_from:]
        parts += [text[done:start], masked]
        done = end
    parts.append(text[done:])
    return "".join(parts)


def _index_of_last_digits(number: str, count: int) -> int:
    seen = 0
    for index in range(len(number) - 1, -1, -1):
        if number[index].isdigit():
            seen += 1
            if seen == count:
                return index
    return 0
