"""Service-to-service tokens: client credentials exchanged at identity, attached to outgoing calls.

A service proves who it is with its credential, `<service>.<mac>` where mac
is HMAC-SHA256 of the service name under the mesh's service secret. Only
identity needs the secret itself; in production each service gets just its
own credential (FINMESH_SERVICE_CREDENTIAL; `python -m finmesh.platform.auth.service_tokens
payments` prints it from FINMESH_SERVICE_SECRET).
Local runs share a secret generated once into the data dir and derive it.
Identity answers GetServiceToken with a short-lived token carrying
ROLE_SERVICE, signed like every access token, so callees verify it locally.
A token is renewed when two thirds of its life have passed; if identity is
unreachable the current token is used until it expires.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import grpc

from finmesh.identity.v1 import identity_service_pb2 as id_pb
from finmesh.identity.v1 import identity_service_pb2_grpc as id_grpc
from finmesh.platform.config import ServiceSettings
from finmesh.platform.observability.logs import get_logger

_log = get_logger("finmesh.auth")

KNOWN_SERVICES = ("identity", "payments", "risk", "notify")
_SECRET_FILE = "service-secret.key"


class TokenSource(Protocol):
    async def token(self) -> str | None: ...


def mesh_secret(settings: ServiceSettings) -> bytes:
    """FINMESH_SERVICE_SECRET, or one generated once into data_dir (shared by a local mesh's processes)."""
    configured = settings.service_secret.get_secret_value()
    if configured:
        return configured.encode()
    path = Path(settings.data_dir) / _SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write aside, then link into place: a concurrent starter either wins or reads a complete file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".service-secret-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64encode(os.urandom(32)))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_bytes().strip()


def credential_for(secret: bytes, service: str) -> str:
    mac = hmac.new(secret, b"finmesh-service-credential:" + service.encode(), hashlib.sha256).digest()
    return f"{service}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def check_credential(secret: bytes, service: str, credential: str) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a caller chooses this one.
    expected = credential_for(secret, service).encode()
    return service in KNOWN_SERVICES and hmac.compare_digest(expected, credential.encode())


def _entry_point_service() -> str:
    """The service this process runs (`python -m finmesh.payments.main` or `finmesh-payments`), or ""."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else os.path.basename(sys.argv[0] if sys.argv else "")
    for service in KNOWN_SERVICES:
        if name in (f"finmesh.{service}.main", f"finmesh-{service}"):
            return service
    return ""


def own_credential(settings: ServiceSettings) -> tuple[str, str]:
    """(service name, credential) of this process; ("", "") when neither is known."""
    configured = settings.service_credential.get_secret_value()
    if configured:
        return configured.partition(".")[0], configured
    service = settings.service_name or _entry_point_service()
    if not service:
        return "", ""
    return service, credential_for(mesh_secret(settings), service)


class RemoteServiceTokens:
    """Service tokens from identity's GetServiceToken, cached and renewed ahead of expiry."""

    def __init__(
        self,
        identity_target: str,
        service: str,
        credential: str,
        *,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._target = identity_target
        self._service = service
        self._credential = credential
        self._timeout = timeout
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._renew_at = 0.0
        self._retry_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def token(self) -> str | None:
        now = self._clock()
        if self._token is not None and now < self._renew_at:
            return self._token
        if now >= self._retry_at:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._token is None or self._clock() >= self._renew_at:
                    await self._renew()
        return self._token if self._clock() < self._expires_at else None

    async def _renew(self) -> None:
        try:
            async with grpc.aio.insecure_channel(self._target) as channel:
                reply = await id_grpc.IdentityServiceStub(channel).GetServiceToken(
                    id_pb.GetServiceTokenRequest(service=self._service, credential=self._credential),
                    timeout=self._timeout,
                )
        except grpc.aio.AioRpcError as error:
            # Keep the current token while it lasts; try again shortly, not on every call.
            self._retry_at = self._clock() + 2.0
            _log.warning("service_token_renewal_failed", service=self._service, code=error.code().name)
            return
        now = self._clock()
        self._token = reply.access_token
        self._expires_at = reply.expires_at.ToSeconds()
        self._renew_at = now + (self._expires_at - now) * 2 / 3


def default_token_source(settings: ServiceSettings) -> TokenSource | None:
    service, credential = own_credential(settings)
    if not credential or not settings.identity_target:
        _log.warning("no_service_token", why="service credential or FINMESH_IDENTITY_TARGET missing")
        return None
    return RemoteServiceTokens(settings.identity_target, service, credential, timeout=settings.call_timeout_seconds)


def main() -> None:
    """Print a service's credential, derived from FINMESH_SERVICE_SECRET (for deployment secrets)."""
    if len(sys.argv) != 2 or sys.argv[1] not in KNOWN_SERVICES:
        sys.exit(f"usage: python -m finmesh.platform.auth.service_tokens {{{'|'.join(KNOWN_SERVICES)}}}")
    settings = ServiceSettings()
    if not settings.service_secret.get_secret_value():
        sys.exit("FINMESH_SERVICE_SECRET is not set")
    print(credential_for(mesh_secret(settings), sys.argv[1]))


if __name__ == "__main__":
    main()
