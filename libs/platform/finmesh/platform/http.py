"""Outbound HTTP to outside parties (banks, the identity registry, SMS providers, webhooks): one aiohttp client.

Each adapter holds one `HttpClient`: a pooled keep-alive session opened on the
first call and closed with the service, a total timeout on every call, and
redirects never followed (a 3xx is an answer, not a new destination: a
webhook URL must not bounce a signed event elsewhere). Transport failures
(refused, reset, DNS, timeout) come out as one exception,
`HttpUnreachable`, whose text names only the failure's class: URLs and bodies
can hold personal data and never reach logs through it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp


class HttpUnreachable(Exception):
    """No usable answer: the party did not answer in time, refused the connection or answered garbage."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    # The decoded JSON body of a 2xx answer, else None: also when it does not decode. A 2xx is the party's
    # answer whatever its body; whether a body is required is the adapter's call (a bank's is, an SMS's is not).
    body: Any


class HttpClient:
    def __init__(self, base_url: str = "", *, timeout_seconds: float, headers: Mapping[str, str] | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpAnswer:
        """`path` is appended to the base URL (or is the whole URL when the client has no base)."""
        if self._session is None:
            # Created on first use, inside the running loop aiohttp binds it to.
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        payload = json.dumps(json_body).encode() if json_body is not None else data
        sent_headers = dict(headers or {})
        if json_body is not None:
            sent_headers.setdefault("Content-Type", "application/json")
        try:
            async with self._session.request(
                method, self._base + path, data=payload, headers=sent_headers, allow_redirects=False
            ) as response:
                raw = await response.read()
                ok = 200 <= response.status < 300
                return HttpAnswer(response.status, _json_or_none(raw) if ok and _is_json(response) else None)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise HttpUnreachable(type(error).__name__) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def _is_json(response: aiohttp.ClientResponse) -> bool:
    # Fakes and banks alike sometimes omit the header; an empty or missing content type is read as JSON.
    return response.content_type in ("application/json", "application/octet-stream", "")
