"""SMS through an HTTP provider: POST {base}/messages {"to", "text"} with a bearer key and an idempotency key."""

from __future__ import annotations

from finmesh.notify.clients.senders import Outgoing, post
from finmesh.platform.http import HttpClient


class HttpSmsSender:
    def __init__(self, base_url: str, api_key: str, timeout: float = 5.0) -> None:
        self._client = HttpClient(base_url, timeout_seconds=timeout, headers={"Authorization": f"Bearer {api_key}"})

    async def send(self, message: Outgoing) -> None:
        # The provider drops a repeat with the same key: a retry after a lost answer sends no second SMS.
        headers = {"Idempotency-Key": message.notification_id}
        body = {"to": message.address, "text": message.body, "reference": message.notification_id}
        await post(self._client, "/messages", "SMS provider", json_body=body, headers=headers)

    async def close(self) -> None:
        await self._client.close()
