"""A loopback TCP proxy that can slow a dependency down or partition it off, for fault tests.

Modes, switchable while connections are open:
- "pass": bytes flow both ways as they come;
- "delay": every chunk is held `delay` seconds before it is forwarded (each direction keeps its order), so a
  call takes at least twice `delay` (request, then response);
- "blackhole": connections are accepted and read, nothing is forwarded, nothing answers: a partition in
  which packets vanish (no refusal, no reset), the case only deadlines catch.

Going back to "pass" closes the connections opened before, as a healed partition whose connections the
peers' TCP stacks have given up on: clients reconnect. Connections are bounded only by the test's own calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class TcpProxy:
    target_port: int
    mode: str = "pass"
    delay: float = 0.0
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def slow(self, delay: float) -> None:
        self.mode, self.delay = "delay", delay

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def heal(self) -> None:
        """Back to "pass"; connections from before are closed so nobody keeps waiting on a dead one."""
        self.mode, self.delay = "pass", 0.0
        self._close_connections()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_connections()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, upstream_writer))
        pumps = [
            asyncio.create_task(self._pump(client_reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, client_writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for writer in (client_writer, upstream_writer):
                writer.close()
                self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(65536):
                if self.mode == "blackhole":
                    continue  # swallowed: the peer hears nothing, not even a reset
                if self.mode == "delay":
                    await asyncio.sleep(self.delay)
                writer.write(chunk)
                await writer.drain()
