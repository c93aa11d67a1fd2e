"""The rollout controller and its record, against an in-memory backend and a scripted analyzer.

The backend keeps what a cluster would (colors, tags, replicas, which color the active and preview Services
select, the record at a revision) and logs every action; the clock is simulated, so pauses and scale-down
delays take no real time. Operators are Controllers with their own actor and lease.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest

from finmesh.rollout.controller import BackendFailed, Controller, Refused
from finmesh.rollout.model import (
    Analysis,
    AnalysisResult,
    ColorView,
    Conflict,
    Measurement,
    Pause,
    ReleaseView,
    SetWeight,
    Step,
)
from finmesh.rollout.record import (
    LEASE_SECONDS,
    InvalidRecord,
    Record,
    step_from_json,
    step_to_json,
    steps_for,
    thresholds_from_values,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


class MemoryBackend:
    """A release of one service in memory: what a cluster keeps, with every action logged."""

    def __init__(self, clock: Clock, *, active: str = "blue", replicas: int = 4) -> None:
        self.clock = clock
        self.active = active
        self.tags = {"blue": "0.1.0", "green": "0.0.9"}
        self.replicas = {active: replicas, "green" if active == "blue" else "blue": 0}
        self.preview = False
        self.canary = False
        self.actions: list[str] = []
        self.record: dict[str, Any] | None = None
        self.revision = 0
        self.fail: set[str] = set()
        # Called before each save: lets a test act as another operator at an exact moment.
        self.before_save: Callable[[], None] | None = None

    def view(self, service: str) -> ReleaseView:
        colors = {c: ColorView(self.tags[c], n) for c, n in self.replicas.items()}
        return ReleaseView(service, self.active, colors, self.preview, self.weight())

    def weight(self) -> int:
        cand = "green" if self.active == "blue" else "blue"
        total = sum(self.replicas.values())
        return round(100 * self.replicas[cand] / total) if self.canary and total else 0

    def _act(self, name: str, text: str) -> None:
        if name in self.fail:
            raise RuntimeError(f"{name} failed (scripted)")
        self.actions.append(text)

    def deploy(self, service: str, color: str, version: str, replicas: int) -> None:
        self._act("deploy", f"deploy {color} {version} x{replicas}")
        self.tags[color], self.replicas[color] = version, replicas

    def set_preview(self, service: str, on: bool) -> None:
        if self.preview != on:
            self._act("preview", f"preview {'on' if on else 'off'}")
        self.preview = on

    def set_weight(self, service: str, candidate: str, weight: int) -> int:
        stable = "green" if candidate == "blue" else "blue"
        n = self.replicas[stable]
        pods = n if weight >= 100 else (0 if weight == 0 else max(1, math.floor(n * weight / (100 - weight) + 0.5)))
        self._act("weight", f"weight {candidate} {weight} -> {pods} pods")
        self.replicas[candidate], self.canary = pods, weight > 0
        return round(100 * pods / (n + pods)) if pods else 0

    def set_active(self, service: str, color: str) -> None:
        self._act("active", f"active {color}")
        self.active, self.canary = color, False

    def scale_down(self, service: str, color: str) -> None:
        self._act("scale_down", f"scale down {color}")
        self.replicas[color] = 0
        self.preview = False

    def load(self, service: str) -> tuple[dict[str, Any] | None, str]:
        return copy.deepcopy(self.record), str(self.revision) if self.record else ""

    def save(self, service: str, record: dict[str, Any], revision: str) -> str:
        hook, self.before_save = self.before_save, None
        if hook:
            hook()
        if revision != (str(self.revision) if self.record else ""):
            raise Conflict(f"record at {self.revision}, not {revision}")
        self.record, self.revision = copy.deepcopy(record), self.revision + 1
        return str(self.revision)


class ScriptedAnalyzer:
    """Verdicts in order (the last repeats); `during` runs at the first stop() call of analysis `n` (0-based)."""

    def __init__(self, clock: Clock, verdicts: list[AnalysisResult] | None = None) -> None:
        self.clock = clock
        self.verdicts = verdicts or [AnalysisResult("Successful", "error rate 0.000 <= 0.010")]
        self.calls: list[tuple[str, str, float]] = []
        self.during: dict[int, Callable[[], None]] = {}
        self.ran: list[float] = []  # seconds each analysis measured before it returned
        self.versions: list[tuple[str, str]] = []  # (candidate, stable) versions each analysis was told

    def analyse(
        self,
        service: str,
        candidate: str,
        stable: str,
        seconds: float,
        *,
        stop: Callable[[], bool] = lambda: False,
        versions: tuple[str, str] = ("", ""),
    ) -> AnalysisResult:
        n = len(self.calls)
        self.versions.append(versions)
        self.calls.append((candidate, stable, seconds))
        deadline = self.clock() + seconds
        while self.clock() < deadline:
            self.clock.sleep(10)
            if n in self.during:
                self.during.pop(n)()
            if stop():
                break
        self.ran.append(seconds - (deadline - self.clock()))
        return self.verdicts[min(n, len(self.verdicts) - 1)]


OK = AnalysisResult("Successful", "all measurements passed")
FAILED = AnalysisResult(
    "Failed",
    "error_rate: green 0.2000 > limit 0.0150 (blue 0.0000) in 2 consecutive measurements",
    (
        Measurement(
            "error_rate",
            'sum(rate(rpc_server_call_duration_seconds_count{deployment_color="green"}[1m]))',
            0.2,
            0.0,
            0.015,
            "Failed",
        ),
    ),
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> MemoryBackend:
    return MemoryBackend(clock)


def operator(backend: MemoryBackend, clock: Clock, analyzer: Any = None, actor: str = "alice", **kw: Any) -> Controller:
    return Controller(
        backend,
        analyzer if analyzer is not None else ScriptedAnalyzer(clock),
        actor=actor,
        log=lambda line: None,
        clock=clock,
        sleep=clock.sleep,
        **kw,
    )


BG_MANUAL: list[Step] = [Analysis(60), Pause(), SetWeight(100), Analysis(120)]


def record(backend: MemoryBackend) -> Record:
    assert backend.record is not None
    return Record.from_json(backend.record)


# --- the record -------------------------------------------------------------------------------------


def test_steps_round_trip_in_the_values_form_and_bad_steps_are_refused() -> None:
    """{"setWeight":10}, {"pause":{"seconds":30}}, {"pause":{}}, {"analysis":{"seconds":60}} read and write back."""
    docs = [{"setWeight": 10}, {"pause": {"seconds": 30.0}}, {"pause": {}}, {"analysis": {"seconds": 60.0}}]
    assert [step_to_json(step_from_json(d)) for d in docs] == docs
    for bad in ({"setWeight": 120}, {"analysis": {}}, {"pause": {"seconds": -1}}, {"jump": 1}, {}):
        with pytest.raises(InvalidRecord):
            step_from_json(bad)


def test_default_steps_from_the_chart_values() -> None:
    """blueGreen: pre-analysis, a pause when autoPromotion is off, promotion, post-analysis; canary: steps then 100."""
    assert steps_for("blueGreen", {}) == [Analysis(60), SetWeight(100), Analysis(120)]
    manual = {"blueGreen": {"autoPromotionEnabled": False, "postPromotionAnalysisSeconds": 0}}
    assert steps_for("blueGreen", manual) == [Analysis(60), Pause(), SetWeight(100)]
    canary = {"canary": {"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]}}
    assert steps_for("canary", canary) == [SetWeight(10), Pause(), SetWeight(50), SetWeight(100)]
    t = thresholds_from_values({"maxErrorRate": 0.02, "failureLimit": 1, "window": "2m"}, min_call_rate=1.0)
    assert (t.max_error_rate, t.failure_limit, t.window, t.min_call_rate) == (0.02, 1, "2m", 1.0)


# --- blue-green ---------------------------------------------------------------------------------------


def test_blue_green_runs_to_the_warm_hold_and_a_later_run_scales_the_old_color_down(
    backend: MemoryBackend, clock: Clock
) -> None:
    """Deploy, preview, analysis, flip, post-analysis; blue kept warm; `run` after the delay finishes: Healthy."""
    analyzer = ScriptedAnalyzer(clock)
    c = operator(backend, clock, analyzer)
    rec = c.start("payments", "0.2.0", strategy="blueGreen", scale_down_delay=300)
    assert backend.actions == ["deploy green 0.2.0 x4", "preview on", "active green"]
    assert analyzer.calls == [("green", "blue", 60), ("green", "blue", 120)]
    # Each color is judged by its own version's calls only (a reused color still has the old one's in the window).
    assert analyzer.versions == [("0.2.0", "0.1.0"), ("0.2.0", "0.1.0")]
    assert rec.phase == "Progressing" and rec.promoted and not rec.scaled_down and rec.lease is None
    assert c.run("payments").phase == "Progressing"  # the delay is not over: nothing to do yet
    clock.sleep(300)
    done = operator(backend, clock, actor="bob").status("payments")  # any operator's status finishes it
    assert done.phase == "Healthy" and done.scaled_down
    assert backend.actions[-2:] == ["scale down blue", "preview off"] or backend.actions[-1] == "scale down blue"
    assert backend.replicas == {"blue": 0, "green": 4} and backend.active == "green"
    verbs = [(e.actor, e.verb) for e in done.history]
    assert verbs[0] == ("alice", "start") and ("bob", "scaled down") in verbs


def test_manual_promotion_pauses_until_another_operator_promotes(backend: MemoryBackend, clock: Clock) -> None:
    """autoPromotion off: the rollout waits Paused at the pause step; bob's promote flips and continues."""
    alice = operator(backend, clock)
    rec = alice.start("payments", "0.2.0", steps=BG_MANUAL)
    assert rec.phase == "Paused" and backend.active == "blue" and "promote" in rec.pause_reason
    with pytest.raises(Refused, match="`promote` goes past it"):
        operator(backend, clock, actor="bob").resume("payments")
    rec = operator(backend, clock, actor="bob").promote("payments", reason="CHG-42 approved")
    assert backend.active == "green" and rec.promoted and rec.phase == "Progressing"
    promote = next(e for e in rec.history if e.verb == "promote")
    assert (promote.actor, promote.reason) == ("bob", "CHG-42 approved")


def test_failed_analysis_aborts_and_names_the_query_and_values(backend: MemoryBackend, clock: Clock) -> None:
    """Pre-promotion analysis Failed: never promoted, traffic stays on blue, green down; the message says why."""
    c = operator(backend, clock, ScriptedAnalyzer(clock, [FAILED]))
    rec = c.start("payments", "0.2.0", steps=BG_MANUAL)
    assert rec.phase == "Degraded"
    assert "error_rate: green 0.2000 > limit 0.0150" in rec.message
    assert rec.analysis is not None and rec.analysis["measurements"][0]["query"].startswith("sum(rate(")
    assert "active green" not in backend.actions
    assert backend.active == "blue" and backend.replicas["green"] == 0 and not backend.preview


def test_post_promotion_failure_flips_back_to_the_warm_color(backend: MemoryBackend, clock: Clock) -> None:
    """Post-promotion analysis Failed: the active Service selects blue again at once; Degraded."""
    c = operator(backend, clock, ScriptedAnalyzer(clock, [OK, FAILED]))
    rec = c.start("payments", "0.2.0", strategy="blueGreen")
    assert rec.phase == "Degraded" and rec.active_color == "blue"
    assert backend.actions[-3:] == ["active green", "active blue", "scale down green"]


def test_inconclusive_analysis_pauses_for_a_human(backend: MemoryBackend, clock: Clock) -> None:
    """Too little traffic to judge: Paused with the analyzer's message; promote accepts the step."""
    quiet = AnalysisResult("Inconclusive", "call_rate: green 0.05/s < 0.2/s in 3 measurements")
    c = operator(backend, clock, ScriptedAnalyzer(clock, [quiet, OK]))
    rec = c.start("payments", "0.2.0", strategy="blueGreen")
    assert rec.phase == "Paused" and "inconclusive" in rec.pause_reason and backend.active == "blue"
    rec = c.promote("payments")
    assert backend.active == "green" and rec.phase == "Progressing"


def test_undo_while_warm_and_refused_after_scale_down(backend: MemoryBackend, clock: Clock) -> None:
    """After promotion blue is kept warm: undo flips back (RolledBack); once scaled down, undo is refused."""
    c = operator(backend, clock)
    c.start("payments", "0.2.0", strategy="blueGreen", scale_down_delay=300)
    rec = operator(backend, clock, actor="bob").undo("payments", reason="latency complaints")
    assert rec.phase == "RolledBack" and backend.active == "blue" and backend.replicas["green"] == 0
    assert rec.history[-2].verb == "undo" and rec.history[-2].reason == "latency complaints"

    backend2 = MemoryBackend(clock)
    c2 = operator(backend2, clock)
    c2.start("payments", "0.2.0", strategy="blueGreen", scale_down_delay=0)
    assert record(backend2).phase == "Healthy"
    with pytest.raises(Refused, match="already scaled down"):
        c2.undo("payments")


def test_undo_before_promotion_is_refused_and_abort_takes_traffic_back(backend: MemoryBackend, clock: Clock) -> None:
    """Before promotion there is nothing to undo; abort puts traffic on stable and scales the candidate down."""
    c = operator(backend, clock)
    c.start("payments", "0.2.0", steps=BG_MANUAL)
    with pytest.raises(Refused, match="not promoted yet"):
        c.undo("payments")
    rec = c.abort("payments", reason="x" * 500)
    assert rec.phase == "Degraded" and len(rec.history[-2].reason) <= 200
    assert backend.active == "blue" and backend.replicas["green"] == 0 and not backend.preview
    with pytest.raises(Refused, match="Degraded"):
        c.promote("payments")


# --- operators acting at any time ---------------------------------------------------------------------


def test_pause_during_analysis_stops_the_driver_and_resume_measures_again(backend: MemoryBackend, clock: Clock) -> None:
    """Bob pauses while alice's driver analyses: it stops within an interval; resume re-runs the analysis."""
    analyzer = ScriptedAnalyzer(clock)
    alice = operator(backend, clock, analyzer)
    analyzer.during[0] = lambda: operator(backend, clock, actor="bob").pause("payments", reason="incident")
    rec = alice.start("payments", "0.2.0", strategy="blueGreen")
    assert rec.phase == "Paused" and rec.pause_reason == "paused by bob: incident" and rec.step_index == 0
    assert backend.active == "blue" and rec.lease is None
    assert analyzer.ran[0] <= 20  # stopped within a measurement interval or two, not after the full 60 s
    rec = operator(backend, clock, analyzer, actor="bob").resume("payments")
    assert len(analyzer.calls) == 3 and backend.active == "green"


def test_abort_from_another_operator_during_analysis_wins(backend: MemoryBackend, clock: Clock) -> None:
    """Bob aborts mid-analysis: alice's driver stops, never promotes; traffic on blue."""
    analyzer = ScriptedAnalyzer(clock)
    alice = operator(backend, clock, analyzer)
    analyzer.during[0] = lambda: operator(backend, clock, actor="bob").abort("payments", reason="pager")
    rec = alice.start("payments", "0.2.0", strategy="blueGreen")
    assert rec.phase == "Degraded" and "aborted by bob: pager" in rec.message
    assert "active green" not in backend.actions and len(analyzer.calls) == 1 and analyzer.ran[0] <= 20


def test_promote_full_skips_the_remaining_steps(backend: MemoryBackend, clock: Clock) -> None:
    """promote --full during pre-analysis: promotion next, no post-promotion analysis."""
    analyzer = ScriptedAnalyzer(clock)
    alice = operator(backend, clock, analyzer)
    analyzer.during[0] = lambda: operator(backend, clock, actor="bob").promote("payments", full=True)
    rec = alice.start("payments", "0.2.0", strategy="blueGreen", scale_down_delay=300)
    assert backend.active == "green" and len(analyzer.calls) == 1 and rec.promoted
    rec = alice.promote("payments", full=True)  # during the warm hold: scale the old color down now
    assert rec.phase == "Healthy" and backend.replicas["blue"] == 0


def test_a_concurrent_write_is_reapplied_not_lost(backend: MemoryBackend, clock: Clock) -> None:
    """Bob pauses between alice's read and write of a step: Conflict, alice re-reads, the pause stays."""
    alice = operator(backend, clock)
    alice.start("payments", "0.2.0", steps=BG_MANUAL, run=False)
    backend.before_save = lambda: operator(backend, clock, actor="bob").pause("payments")
    rec = alice.run("payments")
    assert rec.phase == "Paused" and rec.pause_reason == "paused by bob"
    assert not rec.deployed or backend.actions[:1] == ["deploy green 0.2.0 x4"]


def test_two_drivers_cannot_run_at_once_unless_taking_over(backend: MemoryBackend, clock: Clock) -> None:
    """A fresh lease refuses a second `run`; --take-over or an expired lease lets it drive."""
    alice = operator(backend, clock)
    alice.start("payments", "0.2.0", steps=BG_MANUAL, run=False)
    alice._take_lease("payments", take_over=False)  # alice's driver is alive (as if mid-step)
    bob = operator(backend, clock, actor="bob")
    with pytest.raises(Refused, match=r"alice .* drives this rollout"):
        bob.run("payments")
    assert backend.actions == []
    rec = bob.run("payments", take_over=True)
    assert rec.phase == "Paused" and any(e.verb == "take-over" for e in rec.history)
    # A driver that died: its lease expires after LEASE_SECONDS.
    backend3 = MemoryBackend(clock)
    a3 = operator(backend3, clock)
    a3.start("payments", "0.2.0", steps=BG_MANUAL, run=False)
    a3._take_lease("payments", take_over=False)
    clock.sleep(LEASE_SECONDS + 1)
    assert operator(backend3, clock, actor="bob").run("payments").phase == "Paused"


def test_a_second_start_is_refused_while_one_is_live(backend: MemoryBackend, clock: Clock) -> None:
    """One rollout per service at a time; the same version as the stable one is refused too."""
    c = operator(backend, clock)
    with pytest.raises(Refused, match=r"already runs 0\.1\.0"):
        c.start("payments", "0.1.0")
    c.start("payments", "0.2.0", steps=BG_MANUAL)
    with pytest.raises(Refused, match="is Paused"):
        c.start("payments", "0.3.0")


def test_a_failed_deploy_takes_the_way_back(backend: MemoryBackend, clock: Clock) -> None:
    """The backend cannot deploy: Degraded with the reason; a failing way back raises BackendFailed."""
    backend.fail = {"deploy"}
    rec = operator(backend, clock).start("payments", "0.2.0")
    assert rec.phase == "Degraded" and "deploy failed (scripted)" in rec.message
    b2 = MemoryBackend(clock)
    b2.fail = {"deploy", "scale_down"}
    with pytest.raises(BackendFailed, match="way back to blue failed"):
        operator(b2, clock).start("payments", "0.2.0")
    assert "way back to blue failed" in record(b2).message


# --- canary -------------------------------------------------------------------------------------------


def test_canary_weights_follow_the_steps_and_end_with_the_candidate_alone(backend: MemoryBackend, clock: Clock) -> None:
    """10 -> 25 (timed pause) -> 50 -> 100: effective weights by pods recorded; old color down at the end."""
    steps = [SetWeight(10), Analysis(60), SetWeight(25), Pause(30), SetWeight(50), Analysis(60), SetWeight(100)]
    analyzer = ScriptedAnalyzer(clock)
    rec = operator(backend, clock, analyzer).start("risk", "0.2.0", strategy="canary", steps=steps)
    assert [a for a in backend.actions if a.startswith("weight")] == [
        "weight green 10 -> 1 pods",
        "weight green 25 -> 1 pods",
        "weight green 50 -> 4 pods",
        "weight green 100 -> 4 pods",
    ]
    weights = [e.detail for e in rec.history if e.verb == "setWeight"]
    assert weights == [
        "10% asked, 20% of pods on green",
        "25% asked, 20% of pods on green",
        "50% asked, 50% of pods on green",
    ]
    assert rec.phase == "Healthy" and backend.active == "green" and backend.replicas["blue"] == 0
    assert analyzer.calls == [("green", "blue", 60), ("green", "blue", 60)]


def test_canary_abort_at_the_first_analysis_puts_all_traffic_on_stable(backend: MemoryBackend, clock: Clock) -> None:
    """A failing first analysis: the Service selects blue alone, green to 0, weight 0."""
    steps = [SetWeight(10), Analysis(60), SetWeight(50), SetWeight(100)]
    rec = operator(backend, clock, ScriptedAnalyzer(clock, [FAILED])).start("risk", "0.2.0", "canary", steps)
    assert rec.phase == "Degraded" and rec.weight == 0 and "error_rate" in rec.message
    assert backend.actions[-2:] == ["active blue", "scale down green"] and backend.weight() == 0


def test_failed_gates_hold_the_rollout_before_promotion_until_they_pass(backend: MemoryBackend, clock: Clock) -> None:
    """A gate refusal pauses at the promotion step with the reasons; neither promote nor resume goes around it."""
    refusals = ["contracts: field 3 deleted from finmesh.payments.v1.Payment"]
    checked: list[int] = []

    def gates(rec: Record) -> list[str]:
        checked.append(rec.step_index)
        return list(refusals)

    c = operator(backend, clock, gates=gates)
    rec = c.start("payments", "0.2.0", steps=BG_MANUAL[:1] + BG_MANUAL[2:])
    assert rec.phase == "Paused" and not rec.promoted and backend.active == "blue"
    assert "promotion refused: contracts: field 3 deleted" in rec.pause_reason
    assert operator(backend, clock, actor="bob", gates=gates).promote("payments").phase == "Paused"
    assert backend.active == "blue" and len(checked) == 2
    refusals.clear()
    rec = operator(backend, clock, actor="bob", gates=gates).resume("payments", reason="contract restored")
    assert rec.promoted and backend.active == "green" and len(checked) == 3
    assert [e.verb for e in rec.history].count("gates") == 3
