"""The outbound HTTP client against a real local server: answers, JSON bodies, redirects kept, failures classed."""

import asyncio

import pytest
from aiohttp import web

from finmesh.platform.http import HttpClient, HttpUnreachable


@pytest.fixture
async def server():
    seen: list[tuple[str, str, bytes, str]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.read(), request.headers.get("Authorization", "")))
        return web.json_response({"ok": True, "path": request.path})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=b"{not json", content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/slow", slow)
    app.router.add_get("/garbage", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_posts_json_with_the_clients_headers_and_reads_json(server) -> None:
    base, seen = server
    client = HttpClient(base + "/", timeout_seconds=2, headers={"Authorization": "Bearer k"})
    try:
        answer = await client.request("POST", "/echo", json_body={"a": 1})
    finally:
        await client.close()
    assert answer.status == 200 and answer.body == {"ok": True, "path": "/echo"}
    assert seen == [("POST", "/echo", b'{"a": 1}', "Bearer k")]


async def test_a_redirect_is_an_answer_not_a_new_destination(server) -> None:
    base, _ = server
    client = HttpClient(base, timeout_seconds=2)
    try:
        answer = await client.request("GET", "/redirect")
    finally:
        await client.close()
    assert answer.status == 302 and answer.body is None


async def test_a_timeout_is_unreachable_and_names_no_address(server) -> None:
    base, _ = server
    client = HttpClient(base, timeout_seconds=0.3)
    try:
        with pytest.raises(HttpUnreachable) as caught:
            await client.request("GET", "/slow")
    finally:
        await client.close()
    assert "127.0.0.1" not in str(caught.value)


async def test_a_2xx_whose_body_does_not_decode_is_an_answer_without_a_body(server) -> None:
    # A receiver that took a message and answered "ok" has it: reading that as unreachable would send it again.
    base, _ = server
    client = HttpClient(base, timeout_seconds=2)
    try:
        answer = await client.request("GET", "/garbage")
    finally:
        await client.close()
    assert answer.status == 200 and answer.body is None


async def test_a_refused_connection_is_unreachable() -> None:
    client = HttpClient("http://127.0.0.1:9", timeout_seconds=1)
    try:
        with pytest.raises(HttpUnreachable):
            await client.request("GET", "/")
    finally:
        await client.close()
