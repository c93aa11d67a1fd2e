"""The rollout record: what a rollout is doing, who drives it and what happened, as JSON kept in the cluster.

Pure: no I/O and no clock of its own (callers pass `now`, epoch seconds). The
record is the truth a rollout resumes from: any process that can read it (a
second operator's terminal, a crashed driver restarted) continues where it
stands. Steps are written in the chart values' form (Argo Rollouts' words):
{"setWeight": 10}, {"pause": {"seconds": 30}}, {"pause": {}}, {"analysis": {"seconds": 60}}.

Promotion is the step `setWeight: 100` in both strategies: for blueGreen it is
the flip of the active Service (analysis before it is pre-promotion, through
the preview Service; after it, post-promotion), for canary the end of the steps.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from finmesh.rollout.model import STRATEGIES, Analysis, Pause, Phase, SetWeight, Step, Strategy, Thresholds

RECORD_VERSION = "finmesh.io/rollout-v1"
LEASE_SECONDS = 30.0  # a driver whose heartbeat is older than this is gone: another may take over
MAX_REASON = 200  # characters of an operator's --reason kept in the record
MAX_HISTORY = 300  # events kept (a ConfigMap holds at most 1 MiB)
MAX_MESSAGE = 1000
TERMINAL: tuple[Phase, ...] = ("Degraded", "Healthy", "RolledBack")

# Defaults of the chart values (docs/DEPLOY.md "Progressive delivery"), used when the release has none.
BLUE_GREEN_DEFAULTS: dict[str, Any] = {
    "prePromotionAnalysisSeconds": 60,
    "postPromotionAnalysisSeconds": 120,
    "autoPromotionEnabled": True,
    "scaleDownDelaySeconds": 300,
}
CANARY_DEFAULT_STEPS: list[dict[str, Any]] = [
    {"setWeight": 10},
    {"analysis": {"seconds": 60}},
    {"setWeight": 25},
    {"pause": {"seconds": 30}},
    {"analysis": {"seconds": 60}},
    {"setWeight": 50},
    {"analysis": {"seconds": 60}},
]


class InvalidRecord(ValueError):
    """Steps or a record that cannot be driven (bad JSON shape, weights out of range)."""


# --- steps -----------------------------------------------------------------------------------------


def step_to_json(step: Step) -> dict[str, Any]:
    if isinstance(step, SetWeight):
        return {"setWeight": step.weight}
    if isinstance(step, Pause):
        return {"pause": {} if step.seconds is None else {"seconds": step.seconds}}
    return {"analysis": {"seconds": step.seconds}}


def step_from_json(doc: Mapping[str, Any]) -> Step:
    if not isinstance(doc, Mapping) or len(doc) != 1:
        raise InvalidRecord(f"a step is one of setWeight, pause, analysis: {doc!r}")
    ((kind, arg),) = doc.items()
    try:
        if kind == "setWeight":
            weight = int(arg)
            if not 0 <= weight <= 100:
                raise InvalidRecord(f"setWeight {weight}: a percentage 0..100")
            return SetWeight(weight)
        if kind == "pause":
            seconds = (arg or {}).get("seconds")
            if seconds is not None and float(seconds) < 0:
                raise InvalidRecord(f"pause of {seconds}s")
            return Pause(None if seconds is None else float(seconds))
        if kind == "analysis":
            seconds = float((arg or {})["seconds"])
            if seconds <= 0:
                raise InvalidRecord(f"analysis of {seconds}s")
            return Analysis(seconds)
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        if isinstance(error, InvalidRecord):
            raise
        raise InvalidRecord(f"bad step {doc!r}: {error}") from error
    raise InvalidRecord(f"unknown step {kind!r} (setWeight, pause, analysis)")


def describe_step(step: Step, strategy: Strategy) -> str:
    """One line for logs and `status`."""
    if isinstance(step, SetWeight):
        if step.weight == 100:
            return "promote (the active Service selects the candidate)"
        return f"setWeight {step.weight}"
    if isinstance(step, Pause):
        return "pause until promoted" if step.seconds is None else f"pause {step.seconds:g}s"
    return f"analysis {step.seconds:g}s"


def validate_steps(strategy: Strategy, steps: list[Step]) -> None:
    """blueGreen: analysis and pauses around exactly one promotion (setWeight 100); canary: ends at 100."""
    if strategy not in STRATEGIES:
        raise InvalidRecord(f"strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    promotions = [i for i, s in enumerate(steps) if isinstance(s, SetWeight) and s.weight == 100]
    if len(promotions) != 1:
        raise InvalidRecord(f"{strategy}: exactly one promotion (setWeight 100) is needed, found {len(promotions)}")
    if strategy == "blueGreen" and any(isinstance(s, SetWeight) and s.weight != 100 for s in steps):
        raise InvalidRecord("blueGreen has no partial weights: use the canary strategy")
    if strategy == "canary" and promotions[0] != len(steps) - 1:
        raise InvalidRecord("canary: setWeight 100 (promotion) is the last step")


def steps_for(strategy: Strategy, rollout: Mapping[str, Any] | None = None) -> list[Step]:
    """Default steps from a service's chart values `services.<svc>.rollout` (COMMON shape; {} = defaults)."""
    rollout = rollout or {}
    if strategy == "blueGreen":
        bg = {**BLUE_GREEN_DEFAULTS, **(rollout.get("blueGreen") or {})}
        steps: list[Step] = []
        if float(bg["prePromotionAnalysisSeconds"]) > 0:
            steps.append(Analysis(float(bg["prePromotionAnalysisSeconds"])))
        if not bg["autoPromotionEnabled"]:
            steps.append(Pause())
        steps.append(SetWeight(100))
        if float(bg["postPromotionAnalysisSeconds"]) > 0:
            steps.append(Analysis(float(bg["postPromotionAnalysisSeconds"])))
        return steps
    if strategy == "canary":
        raw = (rollout.get("canary") or {}).get("steps")
        steps = [step_from_json(s) for s in (CANARY_DEFAULT_STEPS if raw is None else raw)]
        if not (steps and isinstance(steps[-1], SetWeight) and steps[-1].weight == 100):
            steps.append(SetWeight(100))
        return steps
    raise InvalidRecord(f"strategy {strategy!r}: one of {', '.join(STRATEGIES)}")


def scale_down_delay_for(strategy: Strategy, rollout: Mapping[str, Any] | None = None) -> float:
    """blueGreen keeps the old color warm (undo target) for scaleDownDelaySeconds; canary scales it down at once."""
    if strategy != "blueGreen":
        return 0.0
    bg = {**BLUE_GREEN_DEFAULTS, **((rollout or {}).get("blueGreen") or {})}
    return float(bg["scaleDownDelaySeconds"])


_THRESHOLD_KEYS = {
    "maxErrorRate": ("max_error_rate", float),
    "maxErrorRateIncrease": ("max_error_rate_increase", float),
    "maxLatencyP99Ratio": ("max_latency_p99_ratio", float),
    "latencySlackSeconds": ("latency_slack_seconds", float),
    "minCallRate": ("min_call_rate", float),
    "window": ("window", str),
    "intervalSeconds": ("interval_seconds", float),
    "failureLimit": ("failure_limit", int),
    "inconclusiveLimit": ("inconclusive_limit", int),
}


def thresholds_from_values(analysis: Mapping[str, Any] | None, **overrides: Any) -> Thresholds:
    """model.Thresholds from chart values `rollouts.analysis` (camelCase), then flags (snake_case, None = unset)."""
    kwargs: dict[str, Any] = {}
    for key, (name, kind) in _THRESHOLD_KEYS.items():
        if analysis and analysis.get(key) is not None:
            kwargs[name] = kind(analysis[key])
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return Thresholds(**kwargs)


# --- who and when --------------------------------------------------------------------------------


def default_actor(flag: str = "") -> str:
    """--actor, else $FINMESH_ACTOR, else user@host of this process."""
    if flag:
        return flag[:100]
    if os.environ.get("FINMESH_ACTOR"):
        return os.environ["FINMESH_ACTOR"][:100]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container with a random uid)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:100]


def iso(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def bounded(text: str, limit: int = MAX_REASON) -> str:
    """One line, at most `limit` characters: a reason or message never carries unbounded input."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class Lease:
    """The process driving the rollout now; `token` tells two drivers of the same actor apart."""

    actor: str
    host: str
    pid: int
    token: str
    heartbeat: float  # epoch seconds

    def fresh(self, now: float) -> bool:
        return now - self.heartbeat < LEASE_SECONDS

    def to_json(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "host": self.host,
            "pid": self.pid,
            "token": self.token,
            "heartbeat": iso(self.heartbeat),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Lease:
        return cls(str(doc["actor"]), str(doc["host"]), int(doc["pid"]), str(doc["token"]), epoch(doc["heartbeat"]))


@dataclass(frozen=True)
class Event:
    time: str
    actor: str
    verb: str
    reason: str = ""
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return dict(self.__dict__)


# --- the record -----------------------------------------------------------------------------------


@dataclass
class Record:
    """One service's rollout. `stable` is the color serving when it started; `candidate` the new version."""

    service: str
    strategy: Strategy
    stable_color: str
    stable_version: str
    candidate_color: str
    candidate_version: str
    replicas: int
    steps: list[Step]
    scale_down_delay: float = 0.0
    step_index: int = 0
    phase: Phase = "Progressing"
    message: str = ""
    deployed: bool = False  # the candidate runs (and, blueGreen, the preview Service shows it)
    promoted_at: float | None = None  # when the active Service first selected the candidate alone
    scaled_down: bool = False  # the old color is at 0 replicas: no undo any more
    weight: int = 0  # the candidate's effective share of pods behind the active Service (percent)
    analysis: dict[str, Any] | None = None  # last AnalysisResult.to_json()
    analysis_note: str = ""  # e.g. "probes only: metric analysis unavailable"
    paused: bool = False  # waiting for an operator: an indefinite pause step, `pause`, an inconclusive analysis
    pause_reason: str = ""
    pause_until: float | None = None  # a timed pause step in progress ends then
    lease: Lease | None = None
    history: list[Event] = field(default_factory=list)
    started: str = ""
    # What the promotion gates compare, fixed at start so that any operator's later verb checks the same:
    # {"stableRef": git ref, "candidateRef": git ref, "skip": [gate names an operator chose to pass over]}.
    gates: dict[str, Any] = field(default_factory=dict)

    # -- derived --

    @property
    def promoted(self) -> bool:
        return self.promoted_at is not None

    @property
    def active_color(self) -> str:
        """The color the active Service selects (alone) now."""
        if self.promoted and self.phase not in ("Degraded", "RolledBack"):
            return self.candidate_color
        return self.stable_color

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    @property
    def current_step(self) -> Step | None:
        return self.steps[self.step_index] if self.step_index < len(self.steps) else None

    def scale_down_at(self) -> float | None:
        return None if self.promoted_at is None else self.promoted_at + self.scale_down_delay

    def settle(self) -> None:
        """Phase from the flags, while the rollout is live (terminal phases are kept)."""
        if not self.done:
            self.phase = "Paused" if self.paused or self.pause_until is not None else "Progressing"

    def add_event(self, now: float, actor: str, verb: str, reason: str = "", detail: str = "") -> None:
        self.history.append(Event(iso(now), actor, verb, bounded(reason), bounded(detail, MAX_MESSAGE)))
        del self.history[:-MAX_HISTORY]

    # -- JSON --

    def to_json(self) -> dict[str, Any]:
        return {
            "apiVersion": RECORD_VERSION,
            "service": self.service,
            "strategy": self.strategy,
            "stable": {"color": self.stable_color, "version": self.stable_version},
            "candidate": {"color": self.candidate_color, "version": self.candidate_version},
            "replicas": self.replicas,
            "steps": [step_to_json(s) for s in self.steps],
            "scaleDownDelaySeconds": self.scale_down_delay,
            "stepIndex": self.step_index,
            "phase": self.phase,
            "message": self.message,
            "deployed": self.deployed,
            "promotedAt": None if self.promoted_at is None else iso(self.promoted_at),
            "scaledDown": self.scaled_down,
            "activeColor": self.active_color,
            "weight": self.weight,
            "analysis": self.analysis,
            "analysisNote": self.analysis_note,
            "paused": self.paused,
            "pauseReason": self.pause_reason,
            "pauseUntil": None if self.pause_until is None else iso(self.pause_until),
            "lease": None if self.lease is None else self.lease.to_json(),
            "started": self.started,
            "gates": self.gates,
            "history": [e.to_json() for e in self.history],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Record:
        try:
            if doc.get("apiVersion") != RECORD_VERSION:
                raise InvalidRecord(f"record apiVersion {doc.get('apiVersion')!r}, expected {RECORD_VERSION}")
            rec = cls(
                service=str(doc["service"]),
                strategy=doc["strategy"],
                stable_color=str(doc["stable"]["color"]),
                stable_version=str(doc["stable"]["version"]),
                candidate_color=str(doc["candidate"]["color"]),
                candidate_version=str(doc["candidate"]["version"]),
                replicas=int(doc["replicas"]),
                steps=[step_from_json(s) for s in doc["steps"]],
                scale_down_delay=float(doc.get("scaleDownDelaySeconds", 0)),
                step_index=int(doc["stepIndex"]),
                phase=doc["phase"],
                message=str(doc.get("message", "")),
                deployed=bool(doc.get("deployed")),
                promoted_at=epoch(doc["promotedAt"]) if doc.get("promotedAt") else None,
                scaled_down=bool(doc.get("scaledDown")),
                weight=int(doc.get("weight", 0)),
                analysis=doc.get("analysis"),
                analysis_note=str(doc.get("analysisNote", "")),
                paused=bool(doc.get("paused")),
                pause_reason=str(doc.get("pauseReason", "")),
                pause_until=epoch(doc["pauseUntil"]) if doc.get("pauseUntil") else None,
                lease=Lease.from_json(doc["lease"]) if doc.get("lease") else None,
                history=[Event(**e) for e in doc.get("history", [])],
                started=str(doc.get("started", "")),
                gates=dict(doc.get("gates") or {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, InvalidRecord):
                raise
            raise InvalidRecord(f"unreadable rollout record: {error!r}") from error
        if rec.phase not in ("Progressing", "Paused", "Degraded", "Healthy", "RolledBack"):
            raise InvalidRecord(f"unknown phase {rec.phase!r}")
        validate_steps(rec.strategy, rec.steps)
        return rec


def summary(rec: Record, now: float) -> list[str]:
    """What `finmesh rollout status` prints: a few lines an SRE reads at a glance."""
    lines = [
        f"{rec.service}: {rec.phase}  {rec.strategy}  {rec.stable_color} {rec.stable_version} (stable) -> "
        f"{rec.candidate_color} {rec.candidate_version} (candidate)",
        f"  active Service selects: {rec.active_color}"
        + (f"  canary weight: {rec.weight}%" if rec.strategy == "canary" else ""),
    ]
    for i, step in enumerate(rec.steps):
        mark = "done" if i < rec.step_index else ("  ->" if i == rec.step_index and not rec.done else "    ")
        lines.append(f"  {mark} {i + 1}. {describe_step(step, rec.strategy)}")
    if rec.paused:
        lines.append(f"  paused: {rec.pause_reason}")
    if rec.pause_until is not None:
        lines.append(f"  timed pause until {iso(rec.pause_until)}")
    at = rec.scale_down_at()
    if at is not None and not rec.scaled_down and rec.phase not in ("Degraded", "RolledBack"):
        lines.append(
            f"  {rec.stable_color} kept warm (undo possible) until {iso(at)}; "
            "`finmesh rollout run` scales it down after that"
        )
    if rec.analysis:
        lines.append(f"  last analysis: {rec.analysis.get('phase')}: {rec.analysis.get('message', '')}")
    if rec.analysis_note:
        lines.append(f"  note: {rec.analysis_note}")
    if rec.message:
        lines.append(f"  message: {rec.message}")
    if rec.lease is not None:
        state = "driving" if rec.lease.fresh(now) else "gone (lease expired)"
        lines.append(f"  driver: {rec.lease.actor} pid {rec.lease.pid} on {rec.lease.host}, {state}")
    return lines
