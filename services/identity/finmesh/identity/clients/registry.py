"""Real-name check (seed 3.1): does the national registry hold this legal name for this identity number?

Pluggable: anything with `async check(legal_name, id_number) -> Match`. The
HTTP adapter speaks the protocol of tools/finmesh/fakes/registry.py (JSON
over HTTP, bearer key): POST /v1/verify {"legal_name", "id_number"} ->
200 {"result": "MATCH" | "MISMATCH", "reference"}; any other answer, a
timeout or a refused connection means the registry is unavailable.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol


class RegistryUnavailable(Exception):
    """No answer from the registry: the check can be retried later."""


@dataclass(frozen=True)
class Match:
    matched: bool
    reference: str


class Registry(Protocol):
    async def check(self, legal_name: str, id_number: str) -> Match: ...


class NoRegistry:
    """No registry configured: every check is unavailable (the step stays PENDING)."""

    async def check(self, legal_name: str, id_number: str) -> Match:
        raise RegistryUnavailable("no identity registry configured (FINMESH_IDENTITY_REGISTRY_URL)")


class HttpRegistry:
    def __init__(self, base_url: str, api_key: str, timeout: float = 3.0) -> None:
        self._url = base_url.rstrip("/") + "/v1/verify"
        self._api_key = api_key
        self._timeout = timeout

    async def check(self, legal_name: str, id_number: str) -> Match:
        # The stdlib client in a worker thread: one short call per onboarding needs no HTTP stack.
        return await asyncio.to_thread(self._post, {"legal_name": legal_name, "id_number": id_number})

    def _post(self, body: dict[str, str]) -> Match:
        request = urllib.request.Request(
            self._url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as error:
            raise RegistryUnavailable(type(error).__name__) from None
        result = answer.get("result") if isinstance(answer, dict) else None
        if result not in ("MATCH", "MISMATCH"):
            raise RegistryUnavailable("unexpected registry answer")
        return Match(result == "MATCH", str(answer.get("reference", "")))
