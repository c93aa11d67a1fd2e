"""A TCP forwarder standing in for a Kubernetes Service: new connections go to the active color.

Like kube-proxy after a selector change, switching only affects connections
opened afterwards; established ones stay on the old backend until a side closes
them. That is exactly why gRPC servers must bound connection age (GOAWAY) and
drain on SIGTERM: this forwarder does nothing to move a long-lived HTTP/2
connection for them.
"""

from __future__ import annotations

import asyncio
from collections import Counter

_CHUNK = 64 * 1024
_CONNECT_TIMEOUT = 1.0


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


class Forwarder:
    """Listens on 127.0.0.1 (ephemeral port) and pipes each accepted connection to the active target."""

    def __init__(self, active: str, host: str = "127.0.0.1") -> None:
        self.active = active
        self._host = host
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.open: Counter[str] = Counter()  # target -> connections open now
        self.accepted: Counter[str] = Counter()  # target -> connections ever routed there
        self.refused: Counter[str] = Counter()  # target -> connections whose backend did not answer
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self._host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def target(self) -> str:
        return f"{self._host}:{self.port}"

    def switch(self, target: str) -> None:
        """Route new connections to `target` (the Service's selector now names the other color)."""
        self.active = target

    async def wait_idle(self, target: str, timeout: float) -> float | None:
        """Seconds until no connection to `target` is open, or None if some still are after `timeout`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while self.open[target]:
            if loop.time() - start > timeout:
                return None
            await asyncio.sleep(0.02)
        return loop.time() - start

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        target = self.active  # chosen once, at connect time, like a Service's conntrack entry
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(*_split(target)), _CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            # The backend is gone: the client sees a reset connection (gRPC UNAVAILABLE) and retries.
            self.refused[target] += 1
            client_writer.close()
            return
        self.accepted[target] += 1
        self.open[target] += 1
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        finally:
            self._pipes.discard(task)
            self.open[target] -= 1
            for writer in (client_writer, upstream_writer):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF, then half-close, so each side sees the other's close."""
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        # A reset on either side: close this side too, which ends the other direction.
        writer.close()
