"""A fake national identity registry: a real HTTP server that answers match, mismatch or unavailable.

API (JSON, "Authorization: Bearer <api key>"):
- POST /v1/verify {"legal_name", "id_number"}
    -> 200 {"result": "MATCH" | "MISMATCH", "reference"}   (the registry's answer)
    -> 503 {"error": "unavailable"}                          (down for maintenance)
    -> 401 without the right key
- POST /v1/control {"script": ["mismatch", "unavailable", ...]} or {"people": {id_number: legal_name}}

By default every well-formed request MATCHes. Answers come, in order, from
the script (then "match"); registered people answer MATCH only for their
own name and MISMATCH otherwise. Request bodies are never logged.

Run standalone: python -m finmesh.fakes.registry --port 0 (prints {"service": "registry", "port": N}).
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from finmesh.fakes.http_base import HttpFake

ANSWERS = ("match", "mismatch", "unavailable")


class FakeRegistry(HttpFake):
    """Takes one scripted answer (ANSWERS) per well-formed, authorized verify request."""

    NAME = "registry"
    STEPS_ARE = "answers"
    STEPS = ANSWERS

    def __init__(self, api_key: str = "test-registry-key", host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(api_key=api_key, host=host, port=port)
        self.requests = 0
        self.people: dict[str, str] = {}

    def routes(self) -> Iterable[web.RouteDef]:
        # One catch-all, as the registry always answered: the body is checked before the path.
        return [web.post("/{target:.*}", self._post)]

    def register(self, id_number: str, legal_name: str) -> None:
        with self._lock:
            self.people[id_number.upper()] = legal_name

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name, number = body.get("legal_name"), body.get("id_number")
        if not isinstance(name, str) or not isinstance(number, str) or not name or len(number) != 18:
            return 400, {"error": "legal_name and an 18-character id_number are required"}
        with self._lock:
            self.requests += 1
            scripted = self.next_step()
            known = self.people.get(number.upper())
        if scripted == "unavailable":
            return 503, {"error": "unavailable"}
        matched = scripted == "match" if scripted else (known is None or known == name)
        return 200, {"result": "MATCH" if matched else "MISMATCH", "reference": f"reg-{uuid.uuid4().hex[:12]}"}

    async def _post(self, request: web.Request) -> web.Response:
        try:
            body = await self.read_json(request, if_empty={})
        except ValueError:
            return self.json_reply({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict):
            return self.json_reply({"error": "body must be a JSON object"}, 400)
        if request.raw_path == "/v1/control":
            return self._control(body)
        if request.raw_path != "/v1/verify":
            return self.json_reply({"error": "not found"}, 404)
        if not self.authorized(request):
            return self.json_reply({"error": "bad api key"}, 401)
        status, answer = self.answer(body)
        return self.json_reply(answer, status)

    def _control(self, body: dict[str, Any]) -> web.Response:
        try:
            self.script(*body.get("script", []))
            for number, name in (body.get("people") or {}).items():
                self.register(number, name)
        except (ValueError, TypeError, AttributeError) as error:
            return self.json_reply({"error": str(error)}, 400)
        return self.json_reply({"ok": True})


def main() -> None:
    parser = argparse.ArgumentParser(description="fake identity registry")
    parser.add_argument("--port", type=int, default=0)
    # The key from the environment keeps it off the process list (`finmesh up` passes it so).
    parser.add_argument("--api-key", default=os.environ.get("FINMESH_FAKE_API_KEY", "test-registry-key"))
    args = parser.parse_args()
    FakeRegistry(args.api_key, port=args.port).run()


if __name__ == "__main__":
    main()
