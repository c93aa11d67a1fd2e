"""Mutual TLS from certificate files: server credentials that pick up renewed files without a restart.

Certificates come from a Kubernetes Secret mounted as files (cert-manager
renews them in place), so the server re-reads them when their modification
time changes: a new connection gets the new certificate, open ones keep the
old until they end. Clients must present a certificate from the same CA.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_settings(cls, cert: str, key: str, ca: str) -> TlsFiles | None:
        """All three paths, or None for plaintext; a partial set is a configuration error."""
        given = [bool(cert), bool(key), bool(ca)]
        if not any(given):
            return None
        if not all(given):
            raise ValueError("FINMESH_TLS_CERT_FILE, FINMESH_TLS_KEY_FILE and FINMESH_TLS_CA_FILE go together")
        return cls(Path(cert), Path(key), Path(ca))

    def stamp(self) -> tuple[float, ...]:
        return tuple(os.stat(p).st_mtime_ns for p in (self.cert, self.key, self.ca))


def _configuration(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(files.key.read_bytes(), files.cert.read_bytes())], root_certificates=files.ca.read_bytes()
    )


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials requiring a client certificate, re-read when the files change."""
    lock = threading.Lock()
    seen = [files.stamp()]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # gRPC calls this for every new TLS handshake; None keeps the current configuration.
        try:
            stamp = files.stamp()
        except OSError:
            return None  # mid-rotation (files being replaced): keep serving the old ones
        with lock:
            if stamp == seen[0]:
                return None
            seen[0] = stamp
        try:
            return _configuration(files)
        except (OSError, ValueError):
            return None

    return grpc.dynamic_ssl_server_credentials(
        _configuration(files),
        fetch,  # type: ignore[arg-type]  # None keeps the certificates (grpc's docs); its stub says no
        require_client_authentication=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes(),
        private_key=files.key.read_bytes(),
        certificate_chain=files.cert.read_bytes(),
    )
