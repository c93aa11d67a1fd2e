"""A batch's view of recent activity, without I/O: totals read back, then brought forward payment by payment."""

from __future__ import annotations

from finmesh.risk.domain.activity import RecentActivity, WindowTotals
from finmesh.risk.domain.scoring import Tally
from finmesh.risk.domain.values import Subject

WINDOWS = {Subject.USER: {86_400, 600}, Subject.DEVICE: {600}, Subject.IP: set()}


def test_totals_add_up_across_currencies_for_counts_only() -> None:
    """Counts take every currency; amounts only the payment's own; windows come back in sorted order."""
    activity = RecentActivity.of(
        WINDOWS,
        [
            WindowTotals(Subject.USER, "u1", "CNY", counts=(2, 5), amounts=(300, 900)),
            WindowTotals(Subject.USER, "u1", "USD", counts=(1, 1), amounts=(40, 40)),
            WindowTotals(Subject.DEVICE, "d1", "CNY", counts=(4,), amounts=(0,)),
        ],
        devices=[],
    )
    values = {Subject.USER: "u1", Subject.DEVICE: "d1", Subject.IP: "10.0.0.1"}
    assert activity.tallies(values, "CNY") == {
        (Subject.USER, 600): Tally(3, 300),
        (Subject.USER, 86_400): Tally(6, 900),
        (Subject.DEVICE, 600): Tally(4, 0),
    }
    assert activity.tallies({Subject.USER: "u2"}, "USD") == {
        (Subject.USER, 600): Tally(0, 0),
        (Subject.USER, 86_400): Tally(0, 0),
    }


def test_recorded_payments_count_for_the_next_ones() -> None:
    """A decided payment adds to every window of its subjects; a declined one adds a count but no amount."""
    activity = RecentActivity.of(WINDOWS, [], devices=[("u1", "phone")])
    values = {Subject.USER: "u1", Subject.DEVICE: ""}
    activity.record(values, "CNY", 500, declined=False, user="u1", device="")
    activity.record(values, "CNY", 700, declined=True, user="u1", device="")
    assert activity.tallies(values, "CNY") == {
        (Subject.USER, 600): Tally(2, 500),
        (Subject.USER, 86_400): Tally(2, 500),
    }
    assert activity.tallies(values, "EUR")[(Subject.USER, 600)] == Tally(2, 0)


def test_devices_become_known_once_recorded() -> None:
    """A user's first device is remembered by the first payment from it; other users are not affected."""
    activity = RecentActivity.of(WINDOWS, [], devices=[("u1", "phone")])
    assert activity.device_history("u1", "laptop") == (False, True)
    assert activity.device_history("u2", "laptop") == (False, False)
    activity.record(
        {Subject.USER: "u1", Subject.DEVICE: "laptop"}, "CNY", 1, declined=False, user="u1", device="laptop"
    )
    assert activity.device_history("u1", "laptop") == (True, True)
    assert activity.device_history("u2", "laptop") == (False, False)
