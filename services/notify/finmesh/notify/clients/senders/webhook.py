"""Webhooks: HTTP POST of the event as JSON, signed with HMAC-SHA256 over "<timestamp>.<body>"."""

from __future__ import annotations

import time

from finmesh.notify.clients.senders import Outgoing, post
from finmesh.notify.domain.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from finmesh.platform.http import HttpClient


class WebhookSender:
    def __init__(self, timeout: float = 5.0) -> None:
        # No base URL: each message carries its receiver's. The client never follows a redirect, so a signed
        # event cannot be bounced to another host; a 3xx is a permanent failure.
        self._client = HttpClient(timeout_seconds=timeout)

    async def send(self, message: Outgoing) -> None:
        body = message.body.encode()
        # Signed afresh on every attempt, so a retry a day later is not refused as stale.
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(message.secret, timestamp, body),
            EVENT_ID_HEADER: message.event_id,
        }
        await post(self._client, message.address, "webhook receiver", data=body, headers=headers)

    async def close(self) -> None:
        await self._client.close()
