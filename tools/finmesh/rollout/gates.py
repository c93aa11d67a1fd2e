"""Promotion gates no metric shows: contracts still compatible, migrations expand-only, the books balanced.

Each gate returns a `GateResult`: passed or not, and one line saying why. A gate that cannot look (no
source tree, Prometheus down, buf missing) fails: promotion is refused for want of evidence, never granted.

- contracts: `buf breaking` (the rules of the candidate's buf.yaml: FILE) of the candidate's protos against
  the stable version's, findings kept to the files of the service's own package and of `common` (what it
  serves; a break in another service's contract is that service's rollout to refuse).
- migrations: every Alembic revision of the service that the candidate has and the stable version has not
  only expands (finmesh.rollout.expand_policy, the rule tests/migrations holds every commit to). A contract
  step passes only when its CONTRACT_AFTER_RELEASE commit is the stable version's commit or older: the code
  running now no longer reads what it removes. That takes git history (`Versions.repo` and `stable_ref`).
- ledger (payments only; "not applicable" elsewhere): the candidate color's own periodic ledger invariant
  check (books sum to zero per currency) reported 0 unbalanced currencies, and ran within
  LEDGER_CHECK_MAX_AGE_SECONDS (the SLO's limit), read from Prometheus (queries.ledger_*).

The versions are two source trees of this repository (`Versions`): a checkout each, or, from two git refs
(the stable version's commit and the candidate's), `versions_from_git(repo, stable_ref, candidate_ref)`,
which extracts just buf.yaml, protos/ and the services' migrations with `git archive` into a temp directory.

How a controller calls it, before promoting (blueGreen) or before the last canary step:

    with versions_from_git(repo, stable_ref, candidate_ref) as versions:
        results = check_gates(service, candidate_color, versions=versions, prometheus_url=url)
    failed = [r for r in results if not r.passed]
    if failed:  # refuse promotion; the candidate keeps its share, traffic stays as it is
        record/print "; ".join(r.line() for r in failed), then pause (or abort)

`skip` names gates an operator chose to pass over (e.g. no source tree where the tool runs); they come back
passed, saying so, so that the record shows it.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory

from finmesh.rollout import expand_policy, queries
from finmesh.rollout.prometheus import PrometheusClient, PrometheusError
from finmesh.slo.objectives import LEDGER_CHECK_MAX_AGE_SECONDS

GATES = ("contracts", "migrations", "ledger")
LEDGER_SERVICES = ("payments",)
BUF_TIMEOUT_SECONDS = 120.0
GIT_TIMEOUT_SECONDS = 60.0
# Findings named in a reason; the rest are counted.
MAX_FINDINGS = 3


@dataclass(frozen=True)
class GateResult:
    gate: str  # one of GATES
    passed: bool
    reason: str

    def line(self) -> str:
        return f"{self.gate}: {'passed' if self.passed else 'FAILED'}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "reason": self.reason}


@dataclass(frozen=True)
class Versions:
    """The stable and the candidate version as source trees of this repository (each with buf.yaml, protos/
    and services/<service>/finmesh/<service>/migrations/). `repo` and `stable_ref` (a git repository holding
    the stable commit) let the migrations gate accept a contract step marked with an older release."""

    stable: Path
    candidate: Path
    repo: Path | None = None
    stable_ref: str | None = None


# Where each gate reads, in a tree of this repository.
_TREE_PATHS = ("buf.yaml", "protos", ":(glob)services/*/finmesh/*/migrations/**")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=GIT_TIMEOUT_SECONDS)


def checkout(repo: Path, ref: str, into: Path) -> Path:
    """The tree of `ref` as far as the gates read it, extracted under `into`; ValueError naming the ref when
    git does not know it."""
    done = _git(repo, "archive", "--format=tar", ref, "--", *_TREE_PATHS)
    if done.returncode != 0:
        raise ValueError(f"git cannot archive {ref!r} in {repo}: {done.stderr.decode(errors='replace').strip()[:200]}")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    return into


@contextmanager
def versions_from_git(repo: Path, stable_ref: str, candidate_ref: str) -> Iterator[Versions]:
    """Both refs checked out (git archive) into a temp directory, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="finmesh-gates-"))
    try:
        yield Versions(
            stable=checkout(repo, stable_ref, work / "stable"),
            candidate=checkout(repo, candidate_ref, work / "candidate"),
            repo=repo,
            stable_ref=stable_ref,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- contracts -------------------------------------------------------------------------------------------------


def buf_binary() -> str | None:
    """buf on PATH, else the one beside this Python (the venv's, from the buf-bin package `make setup` pins)."""
    beside = Path(sys.executable).parent / "buf"
    return shutil.which("buf") or (str(beside) if beside.exists() else None)


def contracts_gate(service: str, versions: Versions, *, buf: str | None = None) -> GateResult:
    """`buf breaking` of the candidate's protos against the stable version's, for the service's own package
    and common."""
    binary = buf or buf_binary()
    if binary is None:
        return GateResult("contracts", False, "not checked: buf is not installed (make setup installs it)")
    try:
        done = subprocess.run(
            [binary, "breaking", ".", "--against", str(versions.stable.resolve()), "--error-format", "json"],
            cwd=versions.candidate,
            capture_output=True,
            text=True,
            timeout=BUF_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        return GateResult("contracts", False, f"not checked: buf breaking ran over {BUF_TIMEOUT_SECONDS:g} s")
    except OSError as error:  # no such candidate tree, buf not executable
        return GateResult("contracts", False, f"not checked: buf breaking did not run: {error}")
    findings = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode not in (0, 100) or (done.returncode == 100 and not findings):
        return GateResult("contracts", False, f"not checked: buf breaking failed: {done.stderr.strip()[:300]}")
    # buf reports protos it cannot compile as findings too (type COMPILE, exit 100): nothing was compared.
    broken = [f for f in findings if f.get("type") == "COMPILE"]
    if broken:
        return GateResult("contracts", False, f"not checked: buf cannot compile the protos: {_finding(broken[0])}")
    mine = (f"protos/finmesh/{service}/", "protos/finmesh/common/")
    breaking = [f for f in findings if str(f.get("path", "")).startswith(mine)]
    if not breaking:
        others = f" ({len(findings)} in other services' contracts)" if findings else ""
        return GateResult(
            "contracts", True, f"{service}'s contracts are wire-compatible with the stable version's{others}"
        )
    named = "; ".join(_finding(f) for f in breaking[:MAX_FINDINGS])
    more = f" (and {len(breaking) - MAX_FINDINGS} more)" if len(breaking) > MAX_FINDINGS else ""
    return GateResult("contracts", False, f"buf breaking: {named}{more}")


def _finding(finding: dict[str, Any]) -> str:
    return f"{finding.get('path')}:{finding.get('start_line', '?')}: {finding.get('message', finding.get('type'))}"


# --- migrations ------------------------------------------------------------------------------------------------


def _migrations(tree: Path, service: str) -> Path:
    return tree / "services" / service / "finmesh" / service / "migrations"


def _revisions(directory: Path) -> set[str]:
    if not (directory / "versions").is_dir():
        return set()
    return {s.revision for s in ScriptDirectory(str(directory)).walk_revisions()}


def migrations_gate(service: str, versions: Versions) -> GateResult:
    """The candidate's new revisions of the service only expand (or are contract steps the stable version
    allows)."""
    candidate_dir = _migrations(versions.candidate, service)
    try:
        new = _revisions(candidate_dir) - _revisions(_migrations(versions.stable, service))
    except Exception as error:  # noqa: BLE001 - a revision that does not load cannot be judged: fail closed
        return GateResult(
            "migrations", False, f"not checked: the revisions do not load: {type(error).__name__}: {error}"
        )
    if not new:
        return GateResult("migrations", True, f"no new revision of the {service} schema")
    stable = versions.stable_ref or ""
    found = expand_policy.problems(
        ScriptDirectory(str(candidate_dir)),
        _commit(versions.repo, stable) if versions.repo and stable else stable,
        repo=versions.repo or versions.candidate,
        only=new,
        released_name=f"the stable version {stable}" if stable else "the stable version (no git ref given)",
    )
    if not found:
        return GateResult("migrations", True, f"{', '.join(sorted(new))} only expand")
    why = "; ".join(f"{rev}: {', '.join(lines)}" for rev, lines in sorted(found.items()))
    return GateResult("migrations", False, f"not expand-only: {why}")


def _commit(repo: Path, ref: str) -> str:
    done = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    return done.stdout.decode().strip() if done.returncode == 0 else ref


def resolves(repo: Path, ref: str) -> bool:
    """Is `ref` a commit in `repo` (what a rollout checks at start, not at promotion)?"""
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# --- ledger ----------------------------------------------------------------------------------------------------


def ledger_gate(
    service: str,
    color: str,
    prometheus: PrometheusClient,
    *,
    at: float | None = None,
    max_age_seconds: float = LEDGER_CHECK_MAX_AGE_SECONDS,
) -> GateResult:
    """The candidate color's last ledger check found no unbalanced currency, and ran within max_age_seconds."""
    if service not in LEDGER_SERVICES:
        return GateResult("ledger", True, f"not applicable: {service} keeps no ledger")
    who = f"{service}/{color}"
    violations_q, age_q = queries.ledger_violations(service, color), queries.ledger_check_age(service, color)
    try:
        age = prometheus.value(age_q, at)
        violations = prometheus.value(violations_q, at)
    except PrometheusError as error:
        return GateResult("ledger", False, f"not checked: {error}")
    if age is None or violations is None:
        return GateResult("ledger", False, f"{who} has reported no ledger check (query: {age_q})")
    if age > max_age_seconds:
        return GateResult(
            "ledger",
            False,
            f"{who}'s last ledger check ran {age:.0f} s ago (> {max_age_seconds:g} s): the check has stopped running",
        )
    if violations != 0:
        return GateResult(
            "ledger",
            False,
            f"{who}'s ledger check found {violations:g} unbalanced currencies (books do not sum to zero; "
            f"query: {violations_q})",
        )
    return GateResult("ledger", True, f"{who}: books balanced in every currency, checked {age:.0f} s ago")


# --- all of them -----------------------------------------------------------------------------------------------


def check_gates(
    service: str,
    candidate_color: str,
    *,
    versions: Versions | None,
    prometheus_url: str | None,
    skip: Collection[str] = (),
    at: float | None = None,
    timeout_seconds: float = 10.0,
) -> list[GateResult]:
    """Every gate, in GATES order; promotion is allowed only when all passed. A missing input fails the gates
    that need it (unless skipped)."""
    unknown = set(skip) - set(GATES)
    if unknown:
        raise ValueError(f"no such gate: {', '.join(sorted(unknown))} (gates: {', '.join(GATES)})")
    results: list[GateResult] = []
    source_gates: tuple[tuple[str, Callable[[str, Versions], GateResult]], ...] = (
        ("contracts", contracts_gate),
        ("migrations", migrations_gate),
    )
    for gate, check in source_gates:
        if gate in skip:
            results.append(GateResult(gate, True, "skipped by the operator"))
        elif versions is None:
            results.append(GateResult(gate, False, "not checked: no source trees of the two versions given"))
        else:
            results.append(check(service, versions))
    if "ledger" in skip:
        results.append(GateResult("ledger", True, "skipped by the operator"))
    elif service in LEDGER_SERVICES and prometheus_url is None:
        results.append(GateResult("ledger", False, "not checked: no Prometheus address given"))
    else:
        client = PrometheusClient(prometheus_url or "", timeout_seconds=timeout_seconds)
        results.append(ledger_gate(service, candidate_color, client, at=at))
    return results
