"""The local runner's restart backoff: growing delays, reset after a stable run, a crash loop gives up."""

from __future__ import annotations

from finmesh.cli.supervisor import CrashCount, RestartPolicy, describe_exit

POLICY = RestartPolicy(restarts=4, first_delay=0.5, max_delay=3.0, stable_after=30.0)


def test_fast_crashes_in_a_row_wait_longer_each_time_up_to_the_cap_then_give_up() -> None:
    count = CrashCount()
    assert [count.crashed(1.0, POLICY) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, None]


def test_a_run_that_lasted_starts_the_count_again() -> None:
    count = CrashCount()
    assert [count.crashed(1.0, POLICY) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert count.crashed(POLICY.stable_after, POLICY) == 0.5
    assert count.crashed(1.0, POLICY) == 1.0


def test_no_restarts_gives_up_at_the_first_crash() -> None:
    assert CrashCount().crashed(100.0, RestartPolicy(restarts=0)) is None


def test_exit_described_by_signal_or_code() -> None:
    assert (describe_exit(-9), describe_exit(1)) == ("killed by SIGKILL", "exit code 1")
