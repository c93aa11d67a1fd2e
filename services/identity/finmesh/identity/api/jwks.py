"""GET /.well-known/jwks.json: identity's verification keys over plain HTTP, for verifiers that speak no gRPC.

Its own small port (FINMESH_JWKS_PORT), not the gRPC one: edge proxies fetch a JWKS with an HTTP/1.1 GET,
and a separate listener keeps it out of the gRPC server's auth guard (the keys are public; GetPublicKeys
takes no token either). The answer is built per request from the key table, as GetPublicKeys is, so a key
RotateSigningKey just started is in the next answer; verifiers cache it for `MAX_AGE_SECONDS` and may
revalidate with If-None-Match (304 while the keys are unchanged).
"""

from __future__ import annotations

from aiohttp import web

from finmesh.identity.domain.jwks import MAX_AGE_SECONDS, PATH, body_and_etag, jwk_set
from finmesh.identity.usecases import keys
from finmesh.identity.usecases.deps import Deps
from finmesh.platform.observability.logs import get_logger
from finmesh.platform.storage.db import failure_facts, is_transient

_log = get_logger("finmesh.identity")
# Gone from the connection quickly on shutdown: a verifier retries a JWKS fetch.
_SHUTDOWN_SECONDS = 0.5
# A database that does not answer: a verifier keeps its cached set and tries again after this.
_RETRY_AFTER_SECONDS = 5


class JwksEndpoint:
    """The HTTP listener; `start` on the service's event loop, `stop` when the service closes."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: a free port); returns the port."""
        app = web.Application()
        app.router.add_get(PATH, self._jwks)  # answers HEAD too
        app.on_response_prepare.append(_without_server_banner)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_SECONDS)
        await runner.setup()
        # The gRPC server takes "[::]" for an IPv6 address; a socket wants it without the brackets.
        site = web.TCPSite(runner, host.removeprefix("[").removesuffix("]"), port)
        await site.start()
        self._runner = runner
        self.port = site.port  # the bound one, also when 0 asked for a free port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _jwks(self, request: web.Request) -> web.Response:
        try:
            _, published = await keys.public_keys(self._deps)
        except Exception as error:
            if not is_transient(error):
                raise  # a bug: aiohttp answers a bare 500
            # The database is down or dropped us, as gRPC's UNAVAILABLE STORAGE_UNAVAILABLE: say when to retry.
            _log.warning("jwks_unavailable", **failure_facts(error))
            return web.Response(
                status=503,
                text="signing keys unavailable; retry\n",
                headers={"Retry-After": str(_RETRY_AFTER_SECONDS), "Cache-Control": "no-store"},
            )
        body, etag = body_and_etag(jwk_set((k.kid, k.public_key) for k in published))
        headers = {"Cache-Control": f"public, max-age={MAX_AGE_SECONDS}", "ETag": etag}
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/jwk-set+json", headers=headers)


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compared as strong: the body is the same bytes)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


async def _without_server_banner(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp announces itself and Python's version; an edge-facing endpoint need not tell a scanner either.
    response.headers["Server"] = "finmesh-identity"
