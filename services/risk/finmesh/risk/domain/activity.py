"""Recent activity as one batch of assessments sees it: velocity tallies and known devices.

Read from the database once for the whole batch, then brought forward in
memory as each payment of the batch is decided, so that the batch's later
payments count its earlier ones exactly as if each had been committed first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from finmesh.risk.domain.scoring import Tally
from finmesh.risk.domain.values import Subject


@dataclass(frozen=True)
class WindowTotals:
    """One subject value's earlier payments in one currency, per window (widest last, as `windows` are)."""

    subject: Subject
    value: str
    currency: str
    counts: tuple[int, ...]  # every attempt
    amounts: tuple[int, ...]  # declined attempts left out


@dataclass
class RecentActivity:
    windows: Mapping[Subject, tuple[int, ...]]
    # (subject, value, window) -> count, in any currency; (subject, value, window, currency) -> amount.
    counts: dict[tuple[Subject, str, int], int] = field(default_factory=dict)
    amounts: dict[tuple[Subject, str, int, str], int] = field(default_factory=dict)
    # user -> the devices the user was seen on.
    devices: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        windows: Mapping[Subject, Iterable[int]],
        totals: Iterable[WindowTotals],
        devices: Iterable[tuple[str, str]],
    ) -> RecentActivity:
        activity = cls({s: tuple(sorted(w)) for s, w in windows.items() if w})
        for t in totals:
            for seconds, count, amount in zip(activity.windows.get(t.subject, ()), t.counts, t.amounts, strict=True):
                key = (t.subject, t.value, seconds)
                activity.counts[key] = activity.counts.get(key, 0) + count
                activity.amounts[(*key, t.currency)] = activity.amounts.get((*key, t.currency), 0) + amount
        for user, device in devices:
            activity.devices.setdefault(user, set()).add(device)
        return activity

    def tallies(self, values: Mapping[Subject, str], currency: str) -> dict[tuple[Subject, int], Tally]:
        """Earlier payments per (subject, window); a subject without a value (no device id) gets no tally."""
        result = {}
        for subject, seconds_set in self.windows.items():
            value = values.get(subject, "")
            if not value:
                continue
            for seconds in seconds_set:
                key = (subject, value, seconds)
                result[(subject, seconds)] = Tally(self.counts.get(key, 0), self.amounts.get((*key, currency), 0))
        return result

    def device_history(self, user: str, device: str) -> tuple[bool, bool]:
        """(this device is known for the user, the user has any known device)."""
        seen = self.devices.get(user, ())
        return device in seen, bool(seen)

    def record(
        self,
        values: Mapping[Subject, str],
        currency: str,
        amount: int,
        *,
        declined: bool,
        user: str,
        device: str,
        velocity: bool = True,
    ) -> None:
        """Count a decided payment: it lies inside every window that ends now (unless `velocity` is off:
        load-test traffic, which the velocity totals read from the database leave out too)."""
        for subject, seconds_set in self.windows.items() if velocity else ():
            value = values.get(subject, "")
            if not value:
                continue
            for seconds in seconds_set:
                key = (subject, value, seconds)
                self.counts[key] = self.counts.get(key, 0) + 1
                if not declined:
                    self.amounts[(*key, currency)] = self.amounts.get((*key, currency), 0) + amount
        if user and device:
            self.devices.setdefault(user, set()).add(device)
