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
import collections
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWERS = ("match", "mismatch", "unavailable")


class FakeRegistry:
    def __init__(self, api_key: str = "test-registry-key", host: str = "127.0.0.1", port: int = 0) -> None:
        self.api_key = api_key
        self.requests = 0
        self.people: dict[str, str] = {}
        self._script: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeRegistry:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeRegistry:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def script(self, *answers: str) -> None:
        """How the next requests are answered, in order; afterwards the default rules apply."""
        unknown = set(answers) - set(ANSWERS)
        if unknown:
            raise ValueError(f"unknown answers {sorted(unknown)}; expected some of {ANSWERS}")
        with self._lock:
            self._script.extend(answers)

    def register(self, id_number: str, legal_name: str) -> None:
        with self._lock:
            self.people[id_number.upper()] = legal_name

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name, number = body.get("legal_name"), body.get("id_number")
        if not isinstance(name, str) or not isinstance(number, str) or not name or len(number) != 18:
            return 400, {"error": "legal_name and an 18-character id_number are required"}
        with self._lock:
            self.requests += 1
            scripted = self._script.popleft() if self._script else None
            known = self.people.get(number.upper())
        if scripted == "unavailable":
            return 503, {"error": "unavailable"}
        matched = scripted == "match" if scripted else (known is None or known == name)
        return 200, {"result": "MATCH" if matched else "MISMATCH", "reference": f"reg-{uuid.uuid4().hex[:12]}"}


def _handler_for(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass  # the bodies carry personal data: log nothing

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._reply(400, {"error": "body must be JSON"})
                return
            if not isinstance(body, dict):
                self._reply(400, {"error": "body must be a JSON object"})
                return
            if self.path == "/v1/control":
                self._control(body)
                return
            if self.path != "/v1/verify":
                self._reply(404, {"error": "not found"})
                return
            if self.headers.get("Authorization") != f"Bearer {registry.api_key}":
                self._reply(401, {"error": "bad api key"})
                return
            self._reply(*registry.answer(body))

        def _control(self, body: dict[str, Any]) -> None:
            try:
                registry.script(*body.get("script", []))
                for number, name in (body.get("people") or {}).items():
                    registry.register(number, name)
            except (ValueError, TypeError, AttributeError) as error:
                self._reply(400, {"error": str(error)})
                return
            self._reply(200, {"ok": True})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="fake identity registry")
    parser.add_argument("--port", type=int, default=0)
    # The key from the environment keeps it off the process list (`finmesh up` passes it so).
    parser.add_argument("--api-key", default=os.environ.get("FINMESH_FAKE_API_KEY", "test-registry-key"))
    args = parser.parse_args()
    registry = FakeRegistry(args.api_key, port=args.port)
    print(json.dumps({"service": "registry", "port": registry.port}), flush=True)
    try:
        registry._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        registry._server.server_close()


if __name__ == "__main__":
    main()
