"""`finmesh health` over mTLS from FINMESH_TLS_* files, as the chart's test pods run it, against a real TLS server."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE_NAME = "fm-finmesh-payments-preview"  # what the chart's certificates must name


def _issue(
    subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, dns: str = ""
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate naming the preview Service, a client certificate, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _issue("finmesh test CA", None)
    server = _pem(*_issue("payments", (ca_cert.subject, ca_key), dns=SERVICE_NAME))
    client = _pem(*_issue("finmesh helm test", (ca_cert.subject, ca_key)))
    other_ca, _ = _issue("someone else's CA", None)
    files = {
        "ca.crt": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.crt": server[0],
        "server.key": server[1],
        "tls.crt": client[0],
        "tls.key": client[1],
        "other-ca.crt": other_ca.public_bytes(serialization.Encoding.PEM),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {name: d / name for name in files}


@pytest.fixture(scope="module")
def tls_server(pki: dict[str, Path]) -> Iterator[str]:
    """A gRPC health server that requires a client certificate signed by the test CA."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(pki["server.key"].read_bytes(), pki["server.crt"].read_bytes())],
        root_certificates=pki["ca.crt"].read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def _health(target: str, tls: dict[str, Path], *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINMESH_TLS_")}
    env.update({f"FINMESH_TLS_{name}_FILE": str(path) for name, path in tls.items()})
    return subprocess.run(
        [sys.executable, "-m", "finmesh.cli.main", "health", target, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_health_presents_the_client_certificate(tls_server: str, pki: dict[str, Path]) -> None:
    """With the chart's three variables set, the check verifies the server and is admitted: SERVING, exit 0."""
    proc = _health(
        tls_server,
        {"CERT": pki["tls.crt"], "KEY": pki["tls.key"], "CA": pki["ca.crt"]},
        "--tls-server-name",
        SERVICE_NAME,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "SERVING"), proc.stderr


@pytest.mark.parametrize(
    ("case", "files", "code"),
    [
        ("plaintext against a TLS server", {}, 1),
        ("no client certificate", {"CA": "ca.crt"}, 1),
        ("server signed by an unknown CA", {"CERT": "tls.crt", "KEY": "tls.key", "CA": "other-ca.crt"}, 1),
        ("certificate without its key", {"CERT": "tls.crt", "CA": "ca.crt"}, 2),
        ("certificate file missing", {"CERT": "missing.crt", "KEY": "tls.key", "CA": "ca.crt"}, 2),
    ],
)
def test_health_fails_without_a_valid_mtls_setup(
    tls_server: str, pki: dict[str, Path], case: str, files: dict[str, str], code: int
) -> None:
    """Anything short of a trusted server and an accepted client certificate is not SERVING (2: misconfigured)."""
    tls = {name: pki.get(file, pki["ca.crt"].with_name(file)) for name, file in files.items()}
    proc = _health(tls_server, tls, "--tls-server-name", SERVICE_NAME, "--timeout", "3")
    assert proc.returncode == code, f"{case}: {proc.stdout}{proc.stderr}"
    assert proc.stdout.strip() != "SERVING"
