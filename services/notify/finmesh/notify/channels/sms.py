"""SMS through an HTTP provider: POST {base}/messages {"to", "text"} with a bearer key and an idempotency key."""

from __future__ import annotations

import aiohttp

from finmesh.notify.channels import Outgoing, SendError, http_failure


class HttpSmsSender:
    def __init__(self, base_url: str, api_key: str, timeout: float = 5.0) -> None:
        self._url = base_url.rstrip("/") + "/messages"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: Outgoing) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            # The provider drops a repeat with the same key: a retry after a lost answer sends no second SMS.
            "Idempotency-Key": message.notification_id,
        }
        body = {"to": message.address, "text": message.body, "reference": message.notification_id}
        try:
            async with self._session.post(self._url, json=body, headers=headers) as response:
                if response.status >= 300:
                    raise http_failure(response.status, "SMS provider")
        except (TimeoutError, aiohttp.ClientError) as error:
            raise SendError(f"SMS provider unreachable: {type(error).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
