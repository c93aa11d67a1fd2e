"""The base every HTTP fake of an outside party stands on (bank, identity registry, SMS provider, webhook receiver).

A fake is an aiohttp.web application on loopback, on an ephemeral port unless
told otherwise, run one of three ways:

- `await fake.start()` ... `await fake.stop()` (or `async with fake`): on the
  running loop, for async tests whose services call it with an async client;
- `with fake:`: on a loop of its own in a daemon thread, for sync fixtures and
  for tests whose caller blocks a loop or is another process;
- `fake.run()`: the standalone process (`python -m finmesh.fakes.<name>`, as
  `finmesh up` starts them) until interrupted.

What every fake shares: the bearer-key check, reading and writing JSON, a log
of what was asked (method and path only: bodies carry personal data), a
slowness knob, and a script of what happens to the next requests (each fake
names the steps it knows and where it takes one). Handlers run on the fake's
loop; tests read and script from theirs, so shared state is guarded by `_lock`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A stopping fake owes nobody a graceful goodbye: an answer it holds back on purpose (a bank "timeout")
# must not hold the test's teardown for as long.
_SHUTDOWN_SECONDS = 0.2
_THREAD_CALL_SECONDS = 10.0  # to start or stop a fake on its own thread's loop


class HttpFake:
    NAME: ClassVar[str] = "fake"  # in the standalone announcement and the thread's name
    STEPS: ClassVar[tuple[str, ...]] = ()  # what script() accepts
    STEPS_ARE: ClassVar[str] = "steps"  # what the fake calls them, in the error a bad script gets
    # None: plain "application/json", as the bank and registry always answered; SMS and webhook said utf-8.
    CHARSET: ClassVar[str | None] = None

    def __init__(self, *, api_key: str = "", host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.host = host
        self.delay_seconds = 0.0  # every request waits this long before it is handled: a slow party
        self.received: list[tuple[str, str]] = []  # (method, path) in arrival order, never a body or query
        self._wanted_port = port
        self._port = 0
        self._script: collections.deque[str] = collections.deque()
        self._lock = threading.RLock()  # a handler holding it may take the next step
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def routes(self) -> Iterable[web.RouteDef]:
        """The fake's endpoints."""
        raise NotImplementedError

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"fake {self.NAME} is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- running ---------------------------------------------------------------------------

    async def start(self) -> Self:
        """Serve on the running loop."""
        app = web.Application(middlewares=[self._observe])
        app.add_routes(self.routes())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_SECONDS)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._wanted_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def __enter__(self) -> Self:
        """Serve on a loop of its own in a daemon thread."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"fake-{self.NAME}", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(_THREAD_CALL_SECONDS)
        except BaseException:
            _end_loop(loop, thread)
            raise
        self._loop, self._thread = loop, thread
        return self

    def __exit__(self, *_: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(_THREAD_CALL_SECONDS)
        finally:
            _end_loop(loop, thread)

    def run(self, announce: Callable[[], str] | None = None) -> None:
        """The standalone process: serve until interrupted. Prints `announce()` once listening, by default
        {"service": NAME, "port": N} (never a key: local runs keep theirs in the data dir)."""

        async def serve() -> None:
            async with self:
                print(announce() if announce else json.dumps({"service": self.NAME, "port": self.port}), flush=True)
                await asyncio.Event().wait()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())

    # -- for the handlers ------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def json_reply(self, body: Any, status: int = 200) -> web.Response:
        return web.Response(
            status=status, body=json.dumps(body).encode(), content_type="application/json", charset=self.CHARSET
        )

    @staticmethod
    async def read_json(request: web.Request, *, if_empty: Any = None) -> Any:
        """The decoded body; `if_empty` for an empty one when given. Raises ValueError when it is not JSON."""
        raw = await request.read()
        if not raw and if_empty is not None:
            return if_empty
        return json.loads(raw)

    def script(self, *steps: str) -> None:
        """What happens to the next requests, in order (where and how each fake takes a step: its docstring)."""
        unknown = set(steps) - set(self.STEPS)
        if unknown:
            raise ValueError(f"unknown {self.STEPS_ARE} {sorted(unknown)}; expected some of {self.STEPS}")
        with self._lock:
            self._script.extend(steps)

    def clear_script(self) -> None:
        with self._lock:
            self._script.clear()

    def next_step(self) -> str | None:
        """The next scripted step, or None when the script is spent (the fake's default applies)."""
        with self._lock:
            return self._script.popleft() if self._script else None

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.received.append((request.method, request.path))
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        return await handler(request)


def _end_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
