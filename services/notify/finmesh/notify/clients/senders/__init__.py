"""Senders put a message on the wire, one per external channel: SMTP e-mail, an HTTP SMS provider, signed webhooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from finmesh.platform.http import HttpClient, HttpUnreachable


@dataclass(frozen=True)
class Outgoing:
    """A message ready to send. `address` is a phone, an e-mail address or a webhook URL: never log it."""

    notification_id: str
    channel: str
    address: str
    subject: str
    body: str
    event_id: str = ""
    secret: str = ""  # webhook signing secret


class SendError(Exception):
    """Sending failed; `permanent` says a retry cannot help (bad address, refused by the provider)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sender(Protocol):
    async def send(self, message: Outgoing) -> None: ...

    async def close(self) -> None: ...


def http_failure(status: int, what: str) -> SendError:
    """Throttling, timeouts and server errors are worth retrying; other 4xx are the request's fault."""
    transient = status in (408, 409, 425, 429) or status >= 500
    return SendError(f"{what} answered HTTP {status}", permanent=not transient)


async def post(
    client: HttpClient,
    path: str,
    what: str,
    *,
    json_body: Any = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """POST one message: any 2xx answer delivers it; anything else is a SendError (`what` names the party)."""
    try:
        answer = await client.request("POST", path, json_body=json_body, data=data, headers=headers)
    except HttpUnreachable as error:
        raise SendError(f"{what} unreachable: {error}") from None
    if answer.status >= 300:
        raise http_failure(answer.status, what)


class Unconfigured:
    """The sender of a channel without endpoint settings: every message fails permanently, into the dead letters."""

    def __init__(self, channel: str) -> None:
        self._channel = channel

    async def send(self, message: Outgoing) -> None:
        raise SendError(f"{self._channel} channel is not configured", permanent=True)

    async def close(self) -> None:
        return None
