"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives and can refuse on demand.

python -m finmesh.fakes.smtp --port 2525
"""

from __future__ import annotations

import argparse
import asyncio
import email
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.smtp import SMTP


class _Handler:
    def __init__(self, owner: FakeSmtpServer) -> None:
        self._owner = owner

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        if address in self._owner.refused_recipients:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        owner = self._owner
        if owner.failures_left:
            owner.failures_left -= 1
            return owner.failure_reply
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        owner.messages.append(message)
        owner.arrived.set()
        return "250 OK"


class FakeSmtpServer:
    """Accepts mail on 127.0.0.1; `fail_next` answers DATA with a temporary (4xx) or permanent (5xx) error."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self.messages: list[EmailMessage] = []
        self.refused_recipients: set[str] = set()
        self.failures_left = 0
        self.failure_reply = "451 4.3.0 try again later"
        self.arrived = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> FakeSmtpServer:
        loop = asyncio.get_running_loop()
        handler = _Handler(self)
        self._server = await loop.create_server(
            lambda: SMTP(handler, hostname="fake-smtp.local"), self.host, self._port
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def fail_next(self, count: int, reply: str = "451 4.3.0 try again later") -> None:
        self.failures_left, self.failure_reply = count, reply

    def recover(self) -> None:
        self.failures_left = 0
        self.refused_recipients.clear()

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in str(m["To"])]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until at least `count` messages arrived (raises TimeoutError)."""
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


async def _serve(port: int) -> None:
    server = await FakeSmtpServer(port=port).start()
    print(f"fake SMTP listening on 127.0.0.1:{server.port}", flush=True)
    seen = 0
    while True:
        await asyncio.sleep(0.5)
        for message in server.messages[seen:]:
            print(f"received: {message['Subject']}", flush=True)
        seen = len(server.messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    asyncio.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
