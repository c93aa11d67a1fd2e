"""Whether a marketing message may go out now: recorded consent, opt-out, quiet hours in the user's zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIME_ZONE = "Asia/Shanghai"


@dataclass(frozen=True)
class ConsentRecord:
    granted: bool
    quiet_start: str = ""  # "HH:MM" in time_zone, "" for none
    quiet_end: str = ""
    time_zone: str = DEFAULT_TIME_ZONE


@dataclass(frozen=True)
class Decision:
    """send now, defer until `not_before`, or refuse with an ErrorReason name."""

    send: bool
    refusal: str = ""
    not_before: datetime | None = None


SEND = Decision(send=True)


def parse_hhmm(text: str) -> time | None:
    """ "22:00" -> time(22, 0); anything else -> None."""
    # isascii too: str.isdigit passes "¹²", which int() refuses.
    if len(text) != 5 or text[2] != ":" or not (text.isascii() and text[:2].isdigit() and text[3:].isdigit()):
        return None
    hours, minutes = int(text[:2]), int(text[3:])
    return time(hours, minutes) if hours < 24 and minutes < 60 else None


def valid_time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def quiet_until(now: datetime, start: time, end: time, zone: ZoneInfo) -> datetime | None:
    """End of the quiet window containing `now`, or None when `now` is outside it.

    The window is [start, end) local time and may wrap midnight (22:00-08:00).
    """
    if start == end:
        return None
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    wraps = start > end
    inside = (start <= clock or clock < end) if wraps else (start <= clock < end)
    if not inside:
        return None
    day = local.date()
    if not wraps or clock >= start:
        day = day + timedelta(days=1) if wraps else day
    return datetime.combine(day, end, tzinfo=zone).astimezone(now.tzinfo)


def decide_marketing(consent: ConsentRecord | None, now: datetime) -> Decision:
    """Refused without consent (CONSENT_MISSING) or after withdrawal (OPTED_OUT); deferred in quiet hours.

    Quiet hours defer rather than refuse: the sender asked for the message
    and the user agreed to receive it, just not at night.
    """
    if consent is None:
        return Decision(send=False, refusal="CONSENT_MISSING")
    if not consent.granted:
        return Decision(send=False, refusal="OPTED_OUT")
    start, end = parse_hhmm(consent.quiet_start), parse_hhmm(consent.quiet_end)
    if start is None or end is None:
        return SEND
    zone = ZoneInfo(consent.time_zone if valid_time_zone(consent.time_zone) else DEFAULT_TIME_ZONE)
    until = quiet_until(now, start, end, zone)
    return SEND if until is None else Decision(send=True, not_before=until)
