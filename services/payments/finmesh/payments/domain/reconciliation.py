"""Reconciliation: a channel's statement (CSV) matched line by line against the ledger's channel operations."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from finmesh.platform.errors import FieldViolation, InvalidArgument
from finmesh.platform.money import MAX_MINOR_UNITS, validate_currency

HEADER = ("channel_reference", "amount_minor_units", "currency_code", "booked_at")
MAX_STATEMENT_BYTES = 4 * 1024 * 1024
MAX_REFERENCE = 64


class Outcome(StrEnum):
    MATCHED = "MATCHED"
    MISSING_IN_LEDGER = "MISSING_IN_LEDGER"
    MISSING_IN_STATEMENT = "MISSING_IN_STATEMENT"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"


@dataclass(frozen=True)
class Booking:
    """One money movement at the channel, signed from the platform's side: in > 0 (top-up), out < 0 (payout)."""

    channel_reference: str
    minor_units: int
    currency: str
    booked_at: datetime | None = None


@dataclass(frozen=True)
class Line:
    channel_reference: str
    outcome: Outcome
    statement_minor_units: int
    ledger_minor_units: int
    currency: str


def parse_statement(data: bytes) -> list[Booking]:
    """Bookings of a statement, or INVALID_ARGUMENT naming each bad line (as statement_csv[line N])."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise InvalidArgument(FieldViolation("statement_csv", f"at most {MAX_STATEMENT_BYTES} bytes"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidArgument(FieldViolation("statement_csv", "must be UTF-8 text")) from None
    try:
        # newline="" as the csv module asks: a bare "\r" inside a line is then data, not a parse error.
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:  # e.g. a cell past the csv module's 128 KiB field limit
        raise InvalidArgument(FieldViolation("statement_csv", f"not CSV: {error}")) from None
    if not rows or tuple(cell.strip() for cell in rows[0]) != HEADER:
        raise InvalidArgument(FieldViolation("statement_csv", "header must be " + ",".join(HEADER)))
    bookings: list[Booking] = []
    problems: list[FieldViolation] = []
    seen: set[str] = set()
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        booking, problem = _parse_row(row)
        if problem is None and booking.channel_reference in seen:
            problem = "duplicate channel_reference"
        if problem is not None:
            problems.append(FieldViolation(f"statement_csv[line {number}]", problem))
            continue
        seen.add(booking.channel_reference)
        bookings.append(booking)
    if problems:
        raise InvalidArgument(problems[:20])
    return bookings


def _parse_row(row: list[str]) -> tuple[Booking, str | None]:
    empty = Booking("", 0, "")
    if len(row) != len(HEADER):
        return empty, f"expected {len(HEADER)} columns"
    reference, amount_text, currency, booked_text = (cell.strip() for cell in row)
    if not reference or len(reference) > MAX_REFERENCE or not reference.isprintable():
        return empty, f"channel_reference: required, at most {MAX_REFERENCE} characters"
    # Integers only: a statement with "12.34" is refused, never rounded.
    digits = amount_text[1:] if amount_text[:1] in "+-" else amount_text
    # Length first: int() refuses more than 4300 digits, and 20 already exceed MAX_MINOR_UNITS.
    if not digits.isdigit() or not digits.isascii() or len(digits) > 19:
        return empty, "amount_minor_units: an integer number of minor units"
    amount = int(amount_text)
    if amount == 0 or abs(amount) > MAX_MINOR_UNITS:
        return empty, "amount_minor_units: non-zero and within range"
    if validate_currency(currency):
        return empty, f"currency_code: unsupported {currency[:8]!r}"
    try:
        booked_at = datetime.fromisoformat(booked_text)
    except ValueError:
        return empty, "booked_at: an ISO 8601 time"
    return Booking(reference, amount, currency, booked_at if booked_at.tzinfo else booked_at.replace(tzinfo=UTC)), None


def statement_end(statement: list[Booking]) -> datetime | None:
    """The latest booking time: ledger operations after it are expected on the next statement, not this one."""
    times = [b.booked_at for b in statement if b.booked_at is not None]
    return max(times) if times else None


def match(statement: list[Booking], ledger: list[Booking]) -> list[Line]:
    """Every reference on either side, once, with its outcome (statement order, then ledger-only lines)."""
    by_reference = {booking.channel_reference: booking for booking in ledger}
    lines: list[Line] = []
    for booking in statement:
        ours = by_reference.pop(booking.channel_reference, None)
        if ours is None:
            lines.append(
                Line(booking.channel_reference, Outcome.MISSING_IN_LEDGER, booking.minor_units, 0, booking.currency)
            )
            continue
        same = ours.minor_units == booking.minor_units and ours.currency == booking.currency
        lines.append(
            Line(
                booking.channel_reference,
                Outcome.MATCHED if same else Outcome.AMOUNT_MISMATCH,
                booking.minor_units,
                ours.minor_units,
                booking.currency,
            )
        )
    for ours in by_reference.values():
        lines.append(Line(ours.channel_reference, Outcome.MISSING_IN_STATEMENT, 0, ours.minor_units, ours.currency))
    return lines
