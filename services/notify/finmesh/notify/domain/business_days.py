"""Business-day arithmetic for service deadlines: weekends and configured holidays do not count."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class BusinessCalendar:
    time_zone: str = "Asia/Shanghai"
    holidays: frozenset[date] = field(default_factory=frozenset)
    # Weekend days declared working days (调休, the make-up days around PRC holidays).
    extra_workdays: frozenset[date] = field(default_factory=frozenset)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def is_business_day(self, day: date) -> bool:
        if day in self.extra_workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def add_business_days(self, start: datetime, days: int) -> datetime:
        """The moment `days` business days after `start`, at the same local time of day.

        A clock started on a non-business day starts at 00:00 of the next
        business day: a complaint filed on Saturday is due as if filed Monday
        at midnight.
        """
        local = start.astimezone(self.zone)
        if not self.is_business_day(local.date()):
            day = local.date()
            while not self.is_business_day(day):
                day += timedelta(days=1)
            local = datetime.combine(day, time(0, 0), tzinfo=self.zone)
        day, remaining = local.date(), days
        while remaining > 0:
            day += timedelta(days=1)
            if self.is_business_day(day):
                remaining -= 1
        return datetime.combine(day, local.timetz().replace(tzinfo=None), tzinfo=self.zone).astimezone(start.tzinfo)
