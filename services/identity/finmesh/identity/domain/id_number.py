"""PRC resident identity numbers (GB 11643-1999): structure, check digit, birth date, age."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
ADULT_AGE = 18


class IdNumberError(ValueError):
    """Why an identity number is not acceptable; `reason` is an ErrorReason name."""

    def __init__(self, message: str, reason: str = "VALIDATION_FAILED") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IdNumber:
    value: str
    birth_date: date

    def age_on(self, today: date) -> int:
        return age_on(self.birth_date, today)


def check_char(first17: str) -> str:
    return _CHECK_CHARS[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def age_on(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def parse_id_number(raw: str, today: date) -> IdNumber:
    """Validate an 18-character identity number; a lower-case x check character is accepted as X."""
    value = raw.strip().upper()
    if len(value) != 18:
        raise IdNumberError("must be 18 characters")
    first17, last = value[:17], value[17]
    if not first17.isascii() or not first17.isdigit() or not (last.isdigit() or last == "X"):
        raise IdNumberError("must be 17 digits followed by a digit or X")
    try:
        birth = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise IdNumberError("birth date is not a real calendar date") from None
    if birth > today or birth.year < 1900:
        raise IdNumberError("birth date is out of range")
    if check_char(first17) != last:
        raise IdNumberError("check digit does not match")
    if age_on(birth, today) < ADULT_AGE:
        raise IdNumberError(f"holder must be at least {ADULT_AGE}", reason="UNDERAGE")
    return IdNumber(value, birth)
