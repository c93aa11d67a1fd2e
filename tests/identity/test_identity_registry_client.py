"""The registry adapter over the platform's HTTP client: the fake registry's protocol, and every unusable
answer (refused, timed out, wrong key, not JSON) is RegistryUnavailable."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from finmesh.fakes.registry import FakeRegistry
from finmesh.identity.clients.registry import HttpRegistry, NoRegistry, RegistryUnavailable

NUMBER = "11010519491231002X"


async def test_match_mismatch_and_unavailable_from_the_fake() -> None:
    with FakeRegistry() as fake:
        registry = HttpRegistry(fake.url, fake.api_key, timeout=2.0)
        try:
            fake.register(NUMBER, "张三")
            match = await registry.check("张三", NUMBER)
            assert match.matched and match.reference.startswith("reg-")
            assert not (await registry.check("李四", NUMBER)).matched
            fake.script("unavailable")
            with pytest.raises(RegistryUnavailable):
                await registry.check("张三", NUMBER)
        finally:
            await registry.close()
        assert fake.requests == 3


async def test_wrong_key_refused_port_and_garbage_are_unavailable() -> None:
    with FakeRegistry() as fake:
        wrong_key = HttpRegistry(fake.url, "not-the-key", timeout=2.0)
        with pytest.raises(RegistryUnavailable):
            await wrong_key.check("张三", NUMBER)
        await wrong_key.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = HttpRegistry(f"http://127.0.0.1:{port}", "k", timeout=2.0)
    with pytest.raises(RegistryUnavailable):
        await refused.check("张三", NUMBER)
    await refused.close()

    class Garbage(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = b'{"result": "PERHAPS"}' if self.path == "/v1/verify" else b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    odd = HttpRegistry(f"http://127.0.0.1:{server.server_address[1]}/", "k", timeout=2.0)
    try:
        with pytest.raises(RegistryUnavailable, match="unexpected"):
            await odd.check("张三", NUMBER)
    finally:
        await odd.close()
        server.shutdown()
        server.server_close()


async def test_no_registry_is_always_unavailable() -> None:
    with pytest.raises(RegistryUnavailable, match="FINMESH_IDENTITY_REGISTRY_URL"):
        await NoRegistry().check("张三", NUMBER)
    await NoRegistry().close()
