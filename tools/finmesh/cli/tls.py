"""Client channels of the CLI: plaintext, or (m)TLS from FINMESH_TLS_* files, and the health check over them.

The chart mounts a certificate Secret into its test pods and sets
FINMESH_TLS_CERT_FILE, FINMESH_TLS_KEY_FILE and FINMESH_TLS_CA_FILE
(docs/DEPLOY.md "mTLS"), so `finmesh health` must present that client
certificate and verify the server against that CA.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CERT_ENV, KEY_ENV, CA_ENV = "FINMESH_TLS_CERT_FILE", "FINMESH_TLS_KEY_FILE", "FINMESH_TLS_CA_FILE"


class TlsConfigError(Exception):
    """FINMESH_TLS_* are set inconsistently or name unreadable files."""


def _read(env: Mapping[str, str], name: str) -> bytes:
    path = env[name]
    try:
        return Path(path).read_bytes()
    except OSError as error:
        # The path is configuration, not a secret; the file's content never appears in messages.
        raise TlsConfigError(f"{name}={path}: {error.strerror}") from error


def client_credentials(env: Mapping[str, str] | None = None) -> grpc.ChannelCredentials | None:
    """Channel credentials from FINMESH_TLS_*: None when none is set (plaintext).

    The CA alone gives server-authenticated TLS; certificate and key add the
    client certificate (mTLS). A certificate without its key, or either without
    a CA, is refused rather than silently falling back to plaintext.
    """
    env = os.environ if env is None else env
    present = {name for name in (CERT_ENV, KEY_ENV, CA_ENV) if env.get(name)}
    if not present:
        return None
    if CA_ENV not in present:
        raise TlsConfigError(f"{CA_ENV} is required when {' and '.join(sorted(present))} is set")
    if len(present & {CERT_ENV, KEY_ENV}) == 1:
        raise TlsConfigError(f"{CERT_ENV} and {KEY_ENV} go together (only {', '.join(sorted(present))} is set)")
    cert = _read(env, CERT_ENV) if CERT_ENV in present else None
    key = _read(env, KEY_ENV) if KEY_ENV in present else None
    return grpc.ssl_channel_credentials(root_certificates=_read(env, CA_ENV), private_key=key, certificate_chain=cert)


def _options(server_name: str) -> list[tuple[str, str]]:
    # Through a port-forward the target is 127.0.0.1, but the certificate names the
    # Service: verify against that name instead.
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


def open_channel(target: str, *, server_name: str = "", env: Mapping[str, str] | None = None) -> grpc.Channel:
    """A blocking channel to target, TLS when FINMESH_TLS_* say so."""
    credentials = client_credentials(env)
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials, options=_options(server_name))


def health_status(
    target: str, *, service: str = "", timeout: float = 2.0, server_name: str = "", env: Mapping[str, str] | None = None
) -> str:
    """grpc.health.v1 status of `service` ("" = the whole server) at target, or the gRPC error code's name."""
    with open_channel(target, server_name=server_name, env=env) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return error.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
