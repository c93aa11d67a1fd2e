"""Where the load goes and how each call presents itself: channels (plaintext or (m)TLS) and call metadata.

Every call carries the W3C baggage mark `synthetic=true` (services keep such traffic apart and refuse to move
money outside dedicated test accounts with it) and, when given, the test accounts' owner's bearer token. The
token lives only in memory and in the metadata tuple; nothing here prints or logs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from finmesh.cli.tls import CA_ENV, CERT_ENV, KEY_ENV, TlsConfigError
from finmesh.load.accounts import TestAccounts

BAGGAGE = ("baggage", "synthetic=true")


@dataclass(frozen=True)
class Tls:
    """Client TLS files: the CA alone verifies the server; certificate and key add a client certificate (mTLS)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    @classmethod
    def from_options(cls, ca: str | None, cert: str | None, key: str | None, server_name: str = "") -> Tls | None:
        """From command-line options, each falling back to FINMESH_TLS_*; None means plaintext."""
        ca = ca or os.environ.get(CA_ENV) or None
        cert = cert or os.environ.get(CERT_ENV) or None
        key = key or os.environ.get(KEY_ENV) or None
        if not (ca or cert or key):
            return None
        if not ca:
            raise TlsConfigError("a CA (--tls-ca or FINMESH_TLS_CA_FILE) is required with a client certificate")
        if bool(cert) != bool(key):
            raise TlsConfigError("--tls-cert and --tls-key go together")
        return cls(Path(ca), Path(cert) if cert else None, Path(key) if key else None, server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path) -> bytes:
            try:
                return path.read_bytes()
            except OSError as error:
                # The path is configuration; the file's content never appears in messages.
                raise TlsConfigError(f"{path}: {error.strerror}") from error

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca),
            private_key=read(self.key) if self.key else None,
            certificate_chain=read(self.cert) if self.cert else None,
        )


@dataclass(frozen=True)
class Endpoint:
    target: str
    tls: Tls | None = None
    token: str = field(default="", repr=False)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token:
            return (("authorization", f"Bearer {self.token}"), BAGGAGE)
        return (BAGGAGE,)

    def channel(self) -> grpc.aio.Channel:
        """A channel of its own (own connection): several spread the load over HTTP/2 connections."""
        options: list[tuple[str, str | int]] = [("grpc.use_local_subchannel_pool", 1)]
        if "," in self.target:  # `ipv4:host:port,host:port`: replicas without a balancer, spread the calls
            options.append(("grpc.lb_policy_name", "round_robin"))
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return grpc.aio.secure_channel(self.target, self.tls.credentials(), options=options)


@dataclass
class Targets:
    """Where a run sends its calls, and the test accounts it may move money between."""

    description: str
    payments: Endpoint | None = None
    identity: Endpoint | None = None
    accounts: TestAccounts | None = None
    notes: list[str] = field(default_factory=list)


def token_from_env(name: str) -> str:
    """The token in environment variable `name` ("" when unset): tokens never go on a command line."""
    return os.environ.get(name, "").strip()
