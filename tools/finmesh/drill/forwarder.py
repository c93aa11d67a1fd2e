"""A TCP forwarder standing in for a Kubernetes Service and kube-proxy: each new connection goes to one endpoint.

Like kube-proxy after a selector change, a change of endpoints only affects
connections opened afterwards; established ones stay on their backend until a
side closes them. That is exactly why gRPC servers must bound connection age
(GOAWAY) and drain on SIGTERM: this forwarder does nothing to move a
long-lived HTTP/2 connection for them.

Blue-green: one endpoint at a time, `switch()` moves new connections to it.

Canary without a mesh: one Service selects the pods of both colors, and
kube-proxy (iptables or nftables mode, the default) picks one pod at random,
uniformly, for each new connection; a color with k ready pods is therefore
picked with probability k / (all pods). The drill runs one process per color
and gives it the weight of its k pods (`set_weights`), because a 2-core machine
cannot run ten or twenty servers: what decides the share is the per-connection
choice, which this reproduces exactly, not the number of processes behind it
(a weighted pick over colors equals a uniform pick over their pods). IPVS mode
would rotate instead (round robin); the random pick is the common and the less
favourable case. Calls are never balanced one by one: a gRPC client sends all
its calls over its connection until the server's max connection age closes
it, which is why the share of *calls* follows the weights only as connections
are renewed (docs/DEPLOY.md, "The local canary drill").
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

_CHUNK = 64 * 1024
_CONNECT_TIMEOUT = 1.0
# What `refused` counts a connection against when no endpoint is selected (a preview Service with no pods).
NO_ENDPOINT = ""


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


@dataclass
class Connection:
    """One routed connection: where it went, when it opened and closed (time.monotonic(); closed 0 while open)."""

    target: str
    opened: float
    closed: float = 0.0


class Forwarder:
    """Listens on 127.0.0.1 (ephemeral port) and pipes each accepted connection to an endpoint picked by weight.

    The endpoints may be changed from another thread (a rollout controller runs in one): they are one
    immutable tuple replaced in a single assignment, and each connection reads it once, when it is accepted.
    """

    def __init__(self, active: str | None = None, host: str = "127.0.0.1", *, rng: random.Random | None = None) -> None:
        self._endpoints: tuple[tuple[str, int], ...] = ((active, 1),) if active else ()
        self._rng = rng or random.Random()
        self._host = host
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.open: Counter[str] = Counter()  # target -> connections open now
        self.accepted: Counter[str] = Counter()  # target -> connections ever routed there
        self.refused: Counter[str] = Counter()  # target -> connections whose backend did not answer
        self.connections: list[Connection] = []  # every routed connection, in the order accepted
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, self._host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def target(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def endpoints(self) -> dict[str, int]:
        """target -> weight (ready pods) of what new connections are spread over now."""
        return dict(self._endpoints)

    @property
    def active(self) -> str:
        """The endpoint with the largest weight (the only one in blue-green); NO_ENDPOINT when there is none."""
        return max(self._endpoints, key=lambda e: e[1])[0] if self._endpoints else NO_ENDPOINT

    def switch(self, target: str) -> None:
        """Route new connections to `target` only (the Service's selector now names the other color)."""
        self.set_weights({target: 1})

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Spread new connections over `weights` (target -> pods); targets of weight 0 get none, {} refuses all."""
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"negative weight in {dict(weights)}")
        self._endpoints = tuple((t, w) for t, w in weights.items() if w > 0)

    def pick(self) -> str:
        """One endpoint, at random by weight: kube-proxy's per-connection choice among ready pods."""
        endpoints = self._endpoints  # read once: another thread may replace it
        if not endpoints:
            return NO_ENDPOINT
        targets, weights = zip(*endpoints, strict=True)
        return self._rng.choices(targets, weights)[0]

    def opened_before(self, target: str, moment: float) -> list[Connection]:
        """Connections to `target` accepted before `moment` (time.monotonic())."""
        return [c for c in self.connections if c.target == target and c.opened < moment]

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
        target = self.pick()  # chosen once, at connect time, like a Service's conntrack entry
        if target == NO_ENDPOINT:
            self.refused[target] += 1  # no ready pod: the client sees a reset connection (UNAVAILABLE)
            client_writer.close()
            return
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
        connection = Connection(target, time.monotonic())
        self.connections.append(connection)
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        except asyncio.CancelledError:
            pass  # close() ends the pipes: end the task quietly (asyncio logs a cancelled connection task)
        finally:
            self._pipes.discard(task)
            self.open[target] -= 1
            connection.closed = time.monotonic()
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
