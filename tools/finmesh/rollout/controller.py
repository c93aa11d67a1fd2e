"""The rollout controller: takes a rollout's steps one at a time, resumably, from the record kept by the backend.

API (the CLI `finmesh rollout <verb>` and the local drill call exactly this)::

    c = Controller(backend, analyzer_or_None, actor="alice@ops", log=print, clock=time.time, sleep=time.sleep,
                   values=chart_values_or_None, analysis_note="")
    c.start(service, version, strategy=None, steps=None, replicas=None, reason="", scale_down_delay=None)
    c.run(service, take_over=False, wait_scale_down=False) -> Record   # steps until a pause, the end, a failure
    c.status(service) -> Record          # also scales the old color down once scaleDownDelay has passed
    c.promote(service, full=False, reason="")   c.pause(service, reason="")   c.resume(service, reason="")
    c.abort(service, reason="")          c.undo(service, reason="")        c.history(service) -> list[Event]

Verbs that only change the record (pause; promote/resume when another process drives) return at once;
`start`, `resume` and `promote` then `run` when no other process holds a fresh lease.

How it stays correct with several operators:
- Every write is read-modify-write of the record at a revision (`Backend.save` raises `Conflict` when someone
  wrote in between); the change is re-applied to the fresh record, so a `pause` or `abort` is never lost.
- One driver at a time: `run` takes the record's lease (actor, host, pid, heartbeat) and refuses while another
  driver's heartbeat is younger than LEASE_SECONDS, unless take_over. Short verbs need no lease.
- A driver re-reads the record between analysis measurements and every `poll_seconds` of a timed pause, so
  `pause`, `abort`, `promote`, `undo` from anywhere take effect within one interval. Backend actions are
  idempotent; after losing a race to an abort the driver applies the abort's actions again.

Analysis verdicts: Successful → next step. Failed or Error → abort (traffic back on stable, phase Degraded, the
message names the query and values). Inconclusive (the analyzer had too little traffic beyond its
inconclusiveLimit) → paused for a human, as Argo Rollouts does: `promote` accepts the step, `resume` measures
again, `abort` gives up.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from finmesh.rollout.model import (
    STRATEGIES,
    Analysis,
    AnalysisResult,
    Analyzer,
    Backend,
    Conflict,
    Pause,
    SetWeight,
    Step,
    Strategy,
)
from finmesh.rollout.record import (
    Event,
    Lease,
    Record,
    bounded,
    describe_step,
    iso,
    scale_down_delay_for,
    steps_for,
    validate_steps,
)

# The promotion gates of a rollout: one line per refusal, none when promotion may go ahead.
Gates = Callable[[Record], list[str]]

HEARTBEAT_SECONDS = 10.0  # a driver refreshes its lease at least this often (LEASE_SECONDS is 30)
_SAVE_ATTEMPTS = 20


class Refused(Exception):
    """The verb cannot be done in the rollout's state (or with these arguments); nothing was changed."""


class BackendFailed(Exception):
    """A backend action of an abort or undo failed: the rollout needs a human (the record says what)."""


def other_color(color: str) -> str:
    return "green" if color == "blue" else "blue"


class Controller:
    def __init__(
        self,
        backend: Backend,
        analyzer: Analyzer | None,
        *,
        actor: str,
        log: Callable[[str], None],
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        values: Mapping[str, Any] | None = None,
        analysis_note: str = "",
        poll_seconds: float = 2.0,
        gates: Gates | None = None,
    ) -> None:
        self.backend = backend
        self.analyzer = analyzer
        self.actor = actor
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.values = values or {}
        self.analysis_note = analysis_note
        self.poll_seconds = poll_seconds
        self.gates = gates
        self._token = uuid.uuid4().hex[:12]
        self._host = socket.gethostname()

    # --- the record --------------------------------------------------------------------------------

    def _load(self, service: str) -> tuple[Record | None, str]:
        doc, revision = self.backend.load(service)
        return (Record.from_json(doc) if doc else None), revision

    def _get(self, service: str) -> tuple[Record, str]:
        rec, revision = self._load(service)
        if rec is None:
            raise Refused(f"no rollout of {service} recorded: start one with `finmesh rollout start {service}`")
        return rec, revision

    def _update(self, service: str, change: Callable[[Record], bool | None]) -> Record:
        """Apply `change` to the freshest record and save it; again on Conflict. `change` returning False: no write."""
        for _ in range(_SAVE_ATTEMPTS):
            rec, revision = self._get(service)
            if change(rec) is False:
                return rec
            rec.settle()
            if self._holds(rec):
                assert rec.lease is not None
                rec.lease.heartbeat = self.clock()
            try:
                self.backend.save(service, rec.to_json(), revision)
            except Conflict:
                continue
            return rec
        raise Refused(f"the rollout record of {service} kept changing under this process; try again")

    def _holds(self, rec: Record) -> bool:
        return rec.lease is not None and rec.lease.token == self._token

    def _event(self, rec: Record, verb: str, reason: str = "", detail: str = "") -> None:
        rec.add_event(self.clock(), self.actor, verb, reason, detail)
        self.log(f"{rec.service}: {verb}{': ' + detail if detail else ''}{' (' + reason + ')' if reason else ''}")

    # --- verbs ---------------------------------------------------------------------------------------

    def start(
        self,
        service: str,
        version: str,
        strategy: Strategy | None = None,
        steps: list[Step] | None = None,
        replicas: int | None = None,
        reason: str = "",
        *,
        scale_down_delay: float | None = None,
        run: bool = True,
        gates: Mapping[str, Any] | None = None,
    ) -> Record:
        """Record a new rollout of `service` to `version` on the other color, then `run` it (unless run=False).
        `gates`: what the promotion gates compare (Record.gates), kept in the record for every later verb."""
        old, revision = self._load(service)
        if old is not None and old.promoted and not old.done:
            raise Refused(
                f"{service} {old.candidate_version} is promoted and {old.stable_color} kept warm for undo: "
                f"`finmesh rollout run {service}` finishes it once the delay is over, `promote --full` now"
            )
        if old is not None and not old.done:
            raise Refused(
                f"a rollout of {service} to {old.candidate_version} is {old.phase}: "
                f"`finmesh rollout status {service}`, then promote, resume or abort it"
            )
        rollout_values = ((self.values.get("services") or {}).get(service) or {}).get("rollout") or {}
        strategy = strategy or rollout_values.get("strategy") or "blueGreen"
        if strategy not in STRATEGIES:
            raise Refused(f"strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
        steps = list(steps) if steps is not None else steps_for(strategy, rollout_values)
        if strategy == "canary" and not (steps and steps[-1] == SetWeight(100)):
            steps.append(SetWeight(100))  # as in the values: the end of the canary steps is 100%
        try:
            validate_steps(strategy, steps)
        except ValueError as error:
            raise Refused(str(error)) from error
        view = self.backend.view(service)
        stable = view.active
        candidate = other_color(stable)
        current = view.colors.get(stable)
        if current is not None and current.tag == version:
            raise Refused(f"{service} already runs {version} on {stable}")
        warm = view.colors.get(candidate)
        if warm is not None and warm.replicas:
            # A warm previous version or an unfinished rollout: deploying over it would destroy the way back.
            raise Refused(
                f"{candidate} still runs {warm.replicas} replicas of {service} "
                f"(a rollout in progress or not finished): finish or roll it back first"
            )
        size = replicas if replicas is not None else (current.replicas if current else 0)
        if size < 1:
            raise Refused(f"candidate size {size}: give replicas >= 1")
        now = self.clock()
        rec = Record(
            service=service,
            strategy=strategy,
            stable_color=stable,
            stable_version=current.tag if current else "",
            candidate_color=candidate,
            candidate_version=version,
            replicas=size,
            steps=steps,
            scale_down_delay=(
                scale_down_delay if scale_down_delay is not None else scale_down_delay_for(strategy, rollout_values)
            ),
            analysis_note=self.analysis_note,
            started=iso(now),
            history=list(old.history) if old else [],
            gates=dict(gates or {}),
        )
        self._event(
            rec,
            "start",
            reason,
            f"{strategy} {rec.stable_color} {rec.stable_version or '(tag unknown)'} -> {candidate} {version}, "
            f"{size} replicas, steps "
            + ", ".join(describe_step(s, strategy) for s in steps)
            + (f"; {self.analysis_note}" if self.analysis_note else ""),
        )
        try:
            self.backend.save(service, rec.to_json(), revision)
        except Conflict as error:
            raise Refused(f"another operator changed the rollout of {service} at the same moment: {error}") from error
        return self.run(service) if run else rec

    def status(self, service: str) -> Record:
        """The record; when the scale-down delay has passed and no driver is at it, scale the old color down."""
        rec, _ = self._get(service)
        if self._finish_due(rec) and not (rec.lease and rec.lease.fresh(self.clock())):
            return self.run(service)
        return rec

    def history(self, service: str) -> list[Event]:
        return self._get(service)[0].history

    def record(self, service: str) -> Record:
        """The record as it is (no side effect, unlike `status`); Refused when there is none."""
        return self._get(service)[0]

    def pause(self, service: str, reason: str = "") -> Record:
        def change(rec: Record) -> bool:
            self._require_live(rec, "pause")
            if rec.paused:
                return False
            rec.paused, rec.pause_reason = True, bounded(f"paused by {self.actor}" + (f": {reason}" if reason else ""))
            self._event(rec, "pause", reason)
            return True

        return self._update(service, change)

    def resume(self, service: str, reason: str = "", *, run: bool = True) -> Record:
        """Lift a pause (an operator's, an indefinite pause step is left to `promote`), then drive on."""

        def change(rec: Record) -> bool:
            self._require_live(rec, "resume")
            if not rec.paused:
                return False
            if isinstance(rec.current_step, Pause) and rec.current_step.seconds is None and not _by_operator(rec):
                raise Refused("the rollout waits at a pause step: `promote` goes past it")
            rec.paused, rec.pause_reason = False, ""
            self._event(rec, "resume", reason)
            return True

        rec = self._update(service, change)
        return self._continue(rec, run)

    def promote(self, service: str, full: bool = False, reason: str = "", *, run: bool = True) -> Record:
        """Go past the current pause (or inconclusive analysis); `full`: skip every step left up to promotion
        and the analysis after it (Argo's `promote --full`); after promotion, `full` scales the old color down now."""

        def change(rec: Record) -> bool:
            self._require_live(rec, "promote", allow_warm=full)
            step = rec.current_step
            if full:
                if rec.promoted:
                    rec.scale_down_delay = max(0.0, self.clock() - (rec.promoted_at or 0.0))
                    rec.step_index = len(rec.steps)
                    detail = f"old color {rec.stable_color} to be scaled down now"
                else:
                    rec.step_index = _promotion_index(rec)
                    detail = "skipping to promotion; no more analysis"
                    rec.steps = rec.steps[: rec.step_index + 1]
            elif (rec.paused and isinstance(step, Pause | Analysis) and not _by_operator(rec)) or (
                rec.pause_until is not None and isinstance(step, Pause)
            ):
                # An indefinite or timed pause step, or an inconclusive analysis: accepted, on to the next step.
                rec.step_index += 1
                detail = f"past {describe_step(step, rec.strategy)}"
            elif rec.paused:
                detail = "pause lifted"
            else:
                raise Refused(
                    f"{service} is not paused (step {rec.step_index + 1}: "
                    f"{describe_step(step, rec.strategy) if step else 'end'}): `promote --full` skips the rest"
                )
            rec.paused, rec.pause_reason, rec.pause_until = False, "", None
            self._event(rec, "promote --full" if full else "promote", reason, detail)
            return True

        rec = self._update(service, change)
        return self._continue(rec, run)

    def abort(self, service: str, reason: str = "") -> Record:
        """Traffic back on the stable color at once and the candidate down; phase Degraded."""
        rec = self.record(service)
        if rec.done:
            raise Refused(f"{service} is {rec.phase}: nothing to abort")
        message = f"aborted by {self.actor}" + (f": {bounded(reason)}" if reason else "")
        return self._abort(service, message, verb="abort", reason=reason)

    def undo(self, service: str, reason: str = "") -> Record:
        """After promotion, while the old color is still warm: make it active again; phase RolledBack."""

        def change(rec: Record) -> bool:
            if not rec.promoted:
                raise Refused(f"{service} is not promoted yet: `abort` takes the traffic back to {rec.stable_color}")
            if rec.scaled_down:
                raise Refused(
                    f"{rec.stable_color} is already scaled down: roll forward with "
                    f"`finmesh rollout start {service} --to {rec.stable_version}`"
                )
            if rec.phase in ("Degraded", "RolledBack"):
                raise Refused(f"{service} is already {rec.phase}")
            rec.phase = "RolledBack"
            rec.message = f"undone by {self.actor}" + (f": {bounded(reason)}" if reason else "")
            rec.paused, rec.pause_until = False, None
            self._event(rec, "undo", reason, f"active Service back to {rec.stable_color} {rec.stable_version}")
            return True

        rec = self._update(service, change)
        return self._way_back(rec)

    # --- driving -------------------------------------------------------------------------------------

    def run(self, service: str, *, take_over: bool = False, wait_scale_down: bool = False) -> Record:
        """Take steps until an indefinite pause, the end (or the scale-down hold), or a failure."""
        self._take_lease(service, take_over)
        try:
            self._drive(service, wait_scale_down)
        finally:
            self._release_lease(service)
        return self._get(service)[0]

    def _drive(self, service: str, wait_scale_down: bool) -> None:
        while True:
            rec, _ = self._get(service)
            if not self._holds(rec):
                self.log(f"{service}: another process took over the rollout; stopping here")
                return
            if rec.done and not self._finish_due(rec):
                return
            if rec.paused:
                return
            if not rec.deployed:
                self._deploy(rec)
                continue
            step = rec.current_step
            if step is None:
                if self._finish_due(rec):
                    self._scale_down_old(rec)
                    continue
                if wait_scale_down and not rec.scaled_down:
                    at = rec.scale_down_at() or self.clock()
                    self.log(f"{service}: keeping {rec.stable_color} warm until {iso(at)} (scaleDownDelay)")
                    self._wait(service, at - self.clock(), lambda r: r.done)
                    continue
                return
            if isinstance(step, SetWeight):
                if step.weight == 100 and not self._gates_pass(rec):
                    continue  # held paused: the loop stops on the next read
                self._set_weight(rec, step)
            elif isinstance(step, Pause):
                self._pause_step(rec, step)
            else:
                self._analysis_step(rec, step)

    def _continue(self, rec: Record, run: bool) -> Record:
        if not run or rec.done or rec.paused:
            return rec
        if rec.lease is not None and rec.lease.fresh(self.clock()) and not self._holds(rec):
            self.log(f"{rec.service}: {rec.lease.actor} (pid {rec.lease.pid}) drives it; it carries on from there")
            return rec
        return self.run(rec.service)

    def _take_lease(self, service: str, take_over: bool) -> None:
        def change(rec: Record) -> bool:
            now = self.clock()
            lease = rec.lease
            if lease is not None and lease.fresh(now) and lease.token != self._token and not take_over:
                raise Refused(
                    f"{lease.actor} (pid {lease.pid} on {lease.host}) drives this rollout, heartbeat "
                    f"{now - lease.heartbeat:.0f}s ago: wait, or --take-over if that process is gone"
                )
            if lease is not None and lease.token != self._token and lease.fresh(now):
                self._event(rec, "take-over", "", f"from {lease.actor} pid {lease.pid} on {lease.host}")
            rec.lease = Lease(self.actor, self._host, os.getpid(), self._token, now)
            return True

        self._update(service, change)

    def _release_lease(self, service: str) -> None:
        def change(rec: Record) -> bool:
            if not self._holds(rec):
                return False
            rec.lease = None
            return True

        try:
            self._update(service, change)
        except Exception as error:  # noqa: BLE001 -- the lease expires by itself; the verb's outcome matters more
            self.log(f"{service}: could not release the lease ({error}); it expires in 30 s")

    def _finish_due(self, rec: Record) -> bool:
        """Promoted, every step taken, the old color still up and its scaleDownDelay over."""
        at = rec.scale_down_at()
        return (
            rec.promoted
            and not rec.scaled_down
            and rec.phase in ("Progressing", "Paused", "Healthy")
            and rec.step_index >= len(rec.steps)
            and at is not None
            and self.clock() >= at
        )

    def _commit(self, rec: Record, change: Callable[[Record], None]) -> Record | None:
        """Save a driver's step outcome, unless the rollout moved on meanwhile (then None: decide again)."""
        index = rec.step_index

        def apply(fresh: Record) -> bool:
            # A paused rollout still records an action that happened; a moved or finished one does not.
            if not self._holds(fresh) or fresh.done or fresh.step_index != index:
                return False
            change(fresh)
            return True

        fresh = self._update(rec.service, apply)
        if fresh.phase in ("Degraded", "RolledBack") and rec.phase not in ("Degraded", "RolledBack"):
            # An abort/undo won the race with this step's action: make sure the way back holds after it.
            self.log(f"{rec.service}: {fresh.phase} meanwhile ({fresh.message}); applying the way back again")
            self._actions_back(fresh)
        return fresh

    def _deploy(self, rec: Record) -> None:
        b, s = self.backend, rec.service
        # A canary starts as one pod taking no traffic (its setWeight steps size it); blueGreen at full size.
        size = 1 if rec.strategy == "canary" else rec.replicas
        self.log(f"{s}: deploy {rec.candidate_version} on {rec.candidate_color} ({size} replicas)")
        try:
            b.deploy(s, rec.candidate_color, rec.candidate_version, size)
            if rec.strategy == "blueGreen":
                # Only now, the candidate's pods being ready: the preview Service never shows pods that are not.
                b.set_preview(s, True)
        except Exception as error:  # noqa: BLE001 -- any backend failure takes the way back
            self._abort(s, f"deploy of {rec.candidate_version} on {rec.candidate_color} failed: {error}")
            return

        def change(r: Record) -> None:
            r.deployed = True
            preview = ", preview Service on" if r.strategy == "blueGreen" else ", weight 0"
            self._event(r, "deploy", "", f"{r.candidate_color} runs {r.candidate_version}{preview}")

        self._commit(rec, change)

    def _set_weight(self, rec: Record, step: SetWeight) -> None:
        b, s, cand = self.backend, rec.service, rec.candidate_color
        try:
            if step.weight == 100:
                if rec.strategy == "canary":
                    b.set_weight(s, cand, 100)  # the candidate at full size before it serves alone
                b.set_active(s, cand)
                effective = 100
            else:
                effective = b.set_weight(s, cand, step.weight)
        except Exception as error:  # noqa: BLE001
            self._abort(s, f"{describe_step(step, rec.strategy)} failed: {error}")
            return
        now = self.clock()

        def change(r: Record) -> None:
            r.weight = effective
            r.step_index += 1
            if step.weight == 100:
                r.promoted_at = now
                self._event(r, "promoted", "", f"active Service selects {cand} {r.candidate_version}")
            else:
                self._event(r, "setWeight", "", f"{step.weight}% asked, {effective}% of pods on {cand}")

        self._commit(rec, change)

    def _gates_pass(self, rec: Record) -> bool:
        """Promotion gates (contracts, migrations, ledger), checked at every attempt to promote: a refusal holds
        the rollout paused with the reasons; `resume` or `promote` checks again, only `abort` gives up. No verb
        goes around a gate: an operator who must (no source tree where the tool runs) says so with --skip-gate,
        which the record shows."""
        if self.gates is None:
            return True
        try:
            refusals = self.gates(rec)
        except Exception as error:  # noqa: BLE001 -- gates that cannot look refuse, never grant
            refusals = [f"gates could not run: {error}"]
        if not refusals:

            def passed(r: Record) -> None:
                self._event(r, "gates", "", "promotion gates passed")

            self._commit(rec, passed)
            return True
        why = bounded("promotion refused: " + "; ".join(refusals), 600)
        self.log(f"{rec.service}: {why}")

        def hold(r: Record) -> None:
            r.paused = True
            r.pause_reason = why + " (fix and `resume`, or `abort`)"
            self._event(r, "gates", "", why)

        self._commit(rec, hold)
        return False

    def _pause_step(self, rec: Record, step: Pause) -> None:
        if step.seconds is None:

            def wait(r: Record) -> None:
                r.paused = True
                r.pause_reason = f"pause step {r.step_index + 1}: `finmesh rollout promote {r.service}` continues"
                self._event(r, "paused", "", r.pause_reason)

            self._commit(rec, wait)
            return
        if rec.pause_until is None:
            until = self.clock() + step.seconds

            def start(r: Record) -> None:
                r.pause_until = until
                self._event(r, "pause", "", f"{step.seconds:g}s, until {iso(until)}")

            self._commit(rec, start)
            return
        index = rec.step_index
        if not self._wait(rec.service, rec.pause_until - self.clock(), lambda r: _moved(r, index)):
            return

        def done(r: Record) -> None:
            r.pause_until = None
            r.step_index += 1

        self._commit(rec, done)

    def _analysis_step(self, rec: Record, step: Analysis) -> None:
        s, index = rec.service, rec.step_index
        when = "post-promotion" if rec.promoted else ("pre-promotion" if rec.strategy == "blueGreen" else "canary")
        self.log(f"{s}: {when} analysis of {rec.candidate_color} against {rec.stable_color} for {step.seconds:g}s")
        interrupted = False
        last_read = [self.clock()]

        def stop() -> bool:
            nonlocal interrupted
            if self.clock() - last_read[0] < min(self.poll_seconds, HEARTBEAT_SECONDS):
                return interrupted
            last_read[0] = self.clock()
            interrupted = interrupted or self._interrupted(s, index)
            return interrupted

        if self.analyzer is None:
            if not self._wait(s, step.seconds, lambda r: _moved(r, index)):
                return
            result = AnalysisResult("Successful", "no analyzer: the step only waited")
        else:
            try:
                result = self.analyzer.analyse(
                    s,
                    rec.candidate_color,
                    rec.stable_color,
                    step.seconds,
                    stop=stop,
                    versions=(rec.candidate_version, rec.stable_version),
                )
            except Exception as error:  # noqa: BLE001 -- an analyzer that cannot judge is an analysis Error
                result = AnalysisResult("Error", f"analysis could not run: {error}")
            if interrupted or self._interrupted(s, index):
                self.log(f"{s}: analysis interrupted by a change of the rollout; deciding again")
                return
        self.log(f"{s}: analysis {result.phase}: {result.message}")

        if result.phase == "Successful":

            def passed(r: Record) -> None:
                r.analysis = result.to_json()
                r.step_index += 1
                self._event(r, "analysis", "", f"{when} Successful: {result.message}")

            self._commit(rec, passed)
        elif result.phase == "Inconclusive":

            def hold(r: Record) -> None:
                r.analysis = result.to_json()
                r.paused = True
                r.pause_reason = (
                    f"{when} analysis inconclusive ({result.message}): `promote` accepts it, `resume` measures "
                    "again, `abort` gives up"
                )
                self._event(r, "analysis", "", f"{when} Inconclusive: {result.message}")

            self._commit(rec, hold)
        else:
            self._abort(s, f"{when} analysis {result.phase}: {result.message}", analysis=result)

    def _interrupted(self, service: str, index: int) -> bool:
        """Has the record moved away from step `index` (pause, promote, abort, undo, take-over)? Heartbeat too."""
        rec, _ = self._get(service)
        if _moved(rec, index) or not self._holds(rec):
            return True
        if rec.lease is not None and self.clock() - rec.lease.heartbeat >= HEARTBEAT_SECONDS:
            self._update(service, lambda r: None if self._holds(r) else False)
        return False

    def _wait(self, service: str, seconds: float, moved: Callable[[Record], bool]) -> bool:
        """Sleep `seconds` in slices, re-reading the record; False when it moved (someone acted)."""
        deadline = self.clock() + seconds
        while (left := deadline - self.clock()) > 0:
            self.sleep(min(left, self.poll_seconds))
            rec, _ = self._get(service)
            if moved(rec) or not self._holds(rec):
                return False
            if rec.lease is not None and self.clock() - rec.lease.heartbeat >= HEARTBEAT_SECONDS:
                self._update(service, lambda r: None if self._holds(r) else False)
        return True

    def _scale_down_old(self, rec: Record) -> None:
        old = rec.stable_color
        try:
            self.backend.scale_down(rec.service, old)
            if rec.strategy == "blueGreen":
                self.backend.set_preview(rec.service, False)
        except Exception as error:
            # The candidate serves; only the clean-up failed. A later `run` tries again.
            text = f"promoted, but scaling {old} down failed: {error}"
            self._update(rec.service, lambda r: setattr(r, "message", bounded(text, 1000)))
            raise BackendFailed(text) from error

        def done(r: Record) -> bool:
            if r.scaled_down or r.phase in ("Degraded", "RolledBack"):
                return False
            r.scaled_down, r.phase = True, "Healthy"
            r.message = f"{r.candidate_version} on {r.candidate_color} is stable; {old} scaled down"
            self._event(r, "scaled down", "", f"{old} to 0 replicas")
            return True

        self._update(rec.service, done)

    # --- the way back ----------------------------------------------------------------------------------

    def _abort(
        self,
        service: str,
        message: str,
        *,
        verb: str = "abort",
        reason: str = "",
        analysis: AnalysisResult | None = None,
    ) -> Record:
        def change(rec: Record) -> bool:
            if rec.phase in ("Degraded", "RolledBack"):
                return False
            if rec.scaled_down:
                raise Refused(f"{service} finished ({rec.phase}): nothing to abort; `start` rolls forward")
            rec.phase = "Degraded"
            rec.message = bounded(message, 1000)
            rec.paused, rec.pause_until = False, None
            if analysis is not None:
                rec.analysis = analysis.to_json()
            self._event(rec, verb, reason, message)
            return True

        rec = self._update(service, change)
        return self._way_back(rec)

    def _way_back(self, rec: Record) -> Record:
        try:
            self._actions_back(rec)
        except Exception as error:  # the record must say so, then a human acts
            text = f"the way back to {rec.stable_color} failed: {error}"
            self._update(rec.service, lambda r: setattr(r, "message", bounded(f"{r.message}; {text}", 1000)))
            raise BackendFailed(text) from error
        back = f"traffic back on {rec.stable_color} {rec.stable_version}; {rec.candidate_color} scaled down"

        def done(r: Record) -> None:
            r.weight = 0
            self._event(r, "way back", "", back)

        return self._update(rec.service, done)

    def _actions_back(self, rec: Record) -> None:
        b, s = self.backend, rec.service
        b.set_active(s, rec.stable_color)
        b.scale_down(s, rec.candidate_color)
        if rec.strategy == "blueGreen":
            b.set_preview(s, False)

    def _require_live(self, rec: Record, verb: str, allow_warm: bool = False) -> None:
        if rec.done and not (allow_warm and rec.phase == "Healthy" and not rec.scaled_down):
            raise Refused(f"{rec.service} is {rec.phase}: nothing to {verb}")
        if rec.promoted and rec.step_index >= len(rec.steps) and not allow_warm:
            raise Refused(f"{rec.service} is promoted: only the scale-down of {rec.stable_color} is left")


def _by_operator(rec: Record) -> bool:
    return rec.pause_reason.startswith("paused by ")


def _moved(rec: Record, index: int) -> bool:
    return rec.done or rec.paused or rec.step_index != index


def _promotion_index(rec: Record) -> int:
    return next(i for i, s in enumerate(rec.steps) if isinstance(s, SetWeight) and s.weight == 100)


__all__ = ["BackendFailed", "Controller", "Event", "Record", "Refused"]
