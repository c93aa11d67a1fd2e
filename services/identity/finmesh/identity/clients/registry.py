"""Real-name check (seed 3.1): does the national registry hold this legal name for this identity number?

Pluggable: anything with `async check(legal_name, id_number) -> Match` and
`async close()`. The HTTP adapter speaks the protocol of
tools/finmesh/fakes/registry.py (JSON over HTTP, bearer key): POST /v1/verify
{"legal_name", "id_number"} -> 200 {"result": "MATCH" | "MISMATCH", "reference"};
any other answer, a timeout or a refused connection means the registry is
unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from finmesh.platform.http import HttpClient, HttpUnreachable


class RegistryUnavailable(Exception):
    """No usable answer from the registry: the check can be retried later."""


@dataclass(frozen=True)
class Match:
    matched: bool
    reference: str


class Registry(Protocol):
    async def check(self, legal_name: str, id_number: str) -> Match: ...

    async def close(self) -> None: ...


class NoRegistry:
    """No registry configured: every check is unavailable (the step stays PENDING)."""

    async def check(self, legal_name: str, id_number: str) -> Match:
        raise RegistryUnavailable("no identity registry configured (FINMESH_IDENTITY_REGISTRY_URL)")

    async def close(self) -> None:
        pass


class HttpRegistry:
    def __init__(self, base_url: str, api_key: str, timeout: float = 3.0) -> None:
        self._http = HttpClient(base_url, timeout_seconds=timeout, headers={"Authorization": f"Bearer {api_key}"})

    async def check(self, legal_name: str, id_number: str) -> Match:
        try:
            answer = await self._http.request(
                "POST", "/v1/verify", json_body={"legal_name": legal_name, "id_number": id_number}
            )
        except HttpUnreachable as error:
            raise RegistryUnavailable(str(error)) from None
        # A non-2xx answer has no body: it falls through to "unexpected" like any other unusable answer.
        body = answer.body
        result = body.get("result") if isinstance(body, dict) else None
        if result not in ("MATCH", "MISMATCH"):
            raise RegistryUnavailable("unexpected registry answer")
        return Match(result == "MATCH", str(body.get("reference", "")))

    async def close(self) -> None:
        await self._http.close()
