"""Webhooks: HTTP POST of the event as JSON, signed with HMAC-SHA256 over "<timestamp>.<body>"."""

from __future__ import annotations

import time

import aiohttp

from finmesh.notify.channels import Outgoing, SendError, http_failure
from finmesh.notify.domain.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


class WebhookSender:
    def __init__(self, timeout: float = 5.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: Outgoing) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = message.body.encode()
        # Signed afresh on every attempt, so a retry a day later is not refused as stale.
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(message.secret, timestamp, body),
            EVENT_ID_HEADER: message.event_id,
        }
        try:
            async with self._session.post(message.address, data=body, headers=headers,
                                          allow_redirects=False) as response:
                if response.status >= 300:
                    raise http_failure(response.status, "webhook receiver")
        except (TimeoutError, aiohttp.ClientError) as error:
            raise SendError(f"webhook receiver unreachable: {type(error).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
