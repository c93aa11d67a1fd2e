"""Deployment-check fixtures: the real helm binary and each value set rendered once per session."""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "finmesh"
VALUES_DIR = Path(__file__).resolve().parent / "values"
INVALID_DIR = VALUES_DIR / "invalid"
HELM_TOOLS = REPO / "tools" / "helm_tools.sh"
CRD_SCHEMAS = REPO / "tools" / "crd_schemas.sh"

# kubectl-v30 ships helm for Kubernetes 1.30; kubernetes-validate has its schemas offline.
KUBE_VERSION = "1.30.0"
RELEASE = "fm"
FULLNAME = "fm-finmesh"

# "default" is the chart's values.yaml alone; the others are files in values/.
VALUE_SETS = ("default", *sorted(p.stem for p in VALUES_DIR.glob("*.yaml")))
INVALID_VALUE_FILES = sorted(INVALID_DIR.glob("*.yaml"))

_skip_reasons: list[str] = []


def in_ci() -> bool:
    """CI sets CI=true: there a missing tool is a failure, never a skip."""
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: deployment checks must run)", pytrace=False)
    if reason not in _skip_reasons:
        _skip_reasons.append(reason)
    pytest.skip(reason)


def need(module: str) -> ModuleType:
    """Import a dev dependency inside a test, so a missing one fails (CI) or skips that test only."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _unavailable(f"dev dependency {module!r} is not installed: {exc}")


def need_tool(name: str, package: str) -> Path:
    """An executable from a dev dependency (beside this Python first, then PATH), or fail (CI) / skip."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        _unavailable(f"{name} (dev dependency {package!r}) is not installed")
    return Path(str(found))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `value_set` over the valid value sets and `invalid_values` over the files that must fail."""
    if "value_set" in metafunc.fixturenames:
        metafunc.parametrize("value_set", VALUE_SETS)
    if "invalid_values" in metafunc.fixturenames:
        metafunc.parametrize("invalid_values", INVALID_VALUE_FILES, ids=[p.stem for p in INVALID_VALUE_FILES])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print why deployment checks were skipped, even under -q."""
    for reason in _skip_reasons:
        terminalreporter.write_line(f"tests/deploy skipped: {reason}", yellow=True)


@dataclass(frozen=True)
class HelmRun:
    """Outcome of one helm invocation."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Helm:
    """The real helm binary, with renders cached per value set."""

    chart = CHART
    release = RELEASE
    fullname = FULLNAME
    kube_version = KUBE_VERSION

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def run(self, *args: str) -> HelmRun:
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return HelmRun(proc.returncode, proc.stdout, proc.stderr)

    @staticmethod
    def values_args(value_set: str) -> list[str]:
        """helm arguments selecting a value set ("default": the chart's values.yaml alone)."""
        return [] if value_set == "default" else ["-f", str(VALUES_DIR / f"{value_set}.yaml")]

    def lint(self, *values_args: str) -> HelmRun:
        return self.run("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *values_args)

    def template(self, *values_args: str) -> HelmRun:
        return self.run(
            "template", RELEASE, str(CHART), "--namespace", "finmesh", "--kube-version", KUBE_VERSION, *values_args
        )

    @cache  # noqa: B019 -- one Helm per session; the cache is the point
    def render(self, value_set: str, *extra: str) -> tuple[dict[str, Any], ...]:
        """Rendered objects of a value set (plus extra helm args); fails the test if helm fails."""
        result = self.template(*self.values_args(value_set), *extra)
        assert result.returncode == 0, f"helm template {value_set} {extra} failed:\n{result.output}"
        return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing for plain maps: overlay wins, maps merge, null deletes."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@cache
def merged_values(value_set: str) -> dict[str, Any]:
    """The values a render of value_set sees (chart defaults plus the file)."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    if value_set == "default":
        return base
    overlay = yaml.safe_load((VALUES_DIR / f"{value_set}.yaml").read_text()) or {}
    return deep_merge(base, overlay)


@pytest.fixture(scope="session")
def helm() -> Helm:
    """The helm binary that tools/helm_tools.sh installs into .tools/bin."""
    try:
        proc = subprocess.run(
            ["bash", str(HELM_TOOLS), "helm"], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"tools/helm_tools.sh could not run: {exc}")
    if proc.returncode != 0:
        _unavailable(f"tools/helm_tools.sh could not install helm: {proc.stderr.strip()[-500:]}")
    binary = Path(proc.stdout.strip().splitlines()[-1])
    return Helm(binary)


@pytest.fixture(scope="session")
def value_sets() -> tuple[str, ...]:
    """Names of the valid value sets: "default" and the files in values/."""
    return VALUE_SETS


@pytest.fixture(scope="session")
def chart_values() -> Any:
    """merged_values(value_set): the values a render of that set sees."""
    return merged_values


@pytest.fixture(scope="session", name="need")
def need_fixture() -> Any:
    """need(module): import a dev dependency, or fail (CI) / skip."""
    return need


@pytest.fixture(scope="session", name="need_tool")
def need_tool_fixture() -> Any:
    """need_tool(name, package): path of a dev dependency's executable, or fail (CI) / skip."""
    return need_tool


@pytest.fixture(scope="session")
def crd_validator() -> Any:
    """validate(docs) -> errors per doc, by the CRD validators of @kubernetes-models/prometheus-operator and
    @kubernetes-models/argo-rollouts (tools/crd_schemas.sh)."""
    node = need_tool("node", "nodejs")
    proc = subprocess.run(["bash", str(CRD_SCHEMAS)], capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        _unavailable(f"tools/crd_schemas.sh could not install the CRD schemas: {proc.stderr.strip()[-500:]}")
    script = proc.stdout.strip().splitlines()[-1]

    def validate(docs: list[dict[str, Any]]) -> list[list[str]]:
        run = subprocess.run(
            [str(node), script], input=json.dumps(docs), capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 0, run.stderr
        results: list[list[str]] = json.loads(run.stdout)
        return results

    return validate
