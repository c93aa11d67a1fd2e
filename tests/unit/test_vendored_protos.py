"""protos/ is the whole contract: it compiles alone, and its vendored third-party protos are the packages' own.

tools/vendor_protos.sh copies google/rpc from the googleapis-common-protos wheel (the one requirements.lock pins,
whose generated code the servers run) and grpc/health/v1/health.proto from npm's grpc-health-check; these tests
fail when a copy drifts from its source, or when protos/VENDORED.md no longer describes what is there.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2

REPO = Path(__file__).resolve().parents[2]
PROTOS = REPO / "protos"
GOOGLE_RPC = ("status", "error_details", "code")
HEALTH = "grpc/health/v1/health.proto"


def _compile(tmp_path: Path, files: list[str]) -> descriptor_pb2.FileDescriptorSet:
    """protoc with protos/ as the only include path (besides protoc's own well-known types)."""
    out = tmp_path / "set.binpb"
    run = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--descriptor_set_out={out}", *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_every_proto_compiles_with_protos_as_the_only_include_path(tmp_path: Path) -> None:
    """What a client in any language does: point its compiler at protos/ and nothing else."""
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    assert {f"google/rpc/{name}.proto" for name in GOOGLE_RPC} | {HEALTH} <= set(files)
    compiled = _compile(tmp_path, files)
    assert {f.name for f in compiled.file} == set(files)


@pytest.mark.parametrize("name", GOOGLE_RPC)
def test_google_rpc_protos_are_the_locked_googleapis_common_protos_files(name: str) -> None:
    """Byte for byte the .proto files of the googleapis-common-protos the servers' Python code comes from."""
    installed = Path(status_pb2.__file__).parent / f"{name}.proto"
    vendored = PROTOS / "google" / "rpc" / f"{name}.proto"
    assert vendored.read_bytes() == installed.read_bytes(), "run tools/vendor_protos.sh after bumping the package"


def _shape(file: descriptor_pb2.FileDescriptorProto) -> tuple[str, dict[str, object], dict[str, object]]:
    """A file's package, messages (fields) and services (methods), independent of declaration order."""
    messages = {
        m.name: sorted((f.number, f.name, f.type, f.type_name.rsplit(".", 1)[-1], f.label) for f in m.field)
        for m in file.message_type
    }
    enums = {
        f"enum {e.name}": sorted((v.number, v.name) for v in e.value) for m in file.message_type for e in m.enum_type
    }
    services = {
        s.name: sorted((m.name, m.input_type, m.output_type, m.server_streaming) for m in s.method)
        for s in file.service
    }
    return file.package, {**messages, **enums}, services


def test_health_proto_describes_the_health_service_the_servers_run(tmp_path: Path) -> None:
    """The vendored health.proto (npm's grpc-health-check; grpcio-health-checking ships none) declares what the
    Python health servicer serves: same messages, fields, enum values and methods."""
    vendored = next(f for f in _compile(tmp_path, [HEALTH]).file if f.name == HEALTH)
    served = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(served)
    assert _shape(vendored) == _shape(served)


def test_vendored_md_names_each_file_its_package_version_and_digest() -> None:
    """protos/VENDORED.md (written by tools/vendor_protos.sh) tells the truth about every vendored file."""
    rows = {
        m["file"]: (m["version"], m["sha"])
        for m in re.finditer(
            r"^\| (?P<file>\S+\.proto) \| .+ \| (?P<version>\S+) \| (?P<sha>[0-9a-f]{64}) \|$",
            (PROTOS / "VENDORED.md").read_text(),
            re.MULTILINE,
        )
    }
    vendored = {str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto") if not p.is_relative_to(PROTOS / "finmesh")}
    assert set(rows) == vendored
    for file, (recorded_version, sha) in rows.items():
        assert hashlib.sha256((PROTOS / file).read_bytes()).hexdigest() == sha, file
        if file.startswith("google/rpc/"):
            assert recorded_version == version("googleapis-common-protos"), file
