"""Requests that do not parse as their message answer INVALID_ARGUMENT, not UNKNOWN.

grpcio runs the generated request deserializer before any servicer code, and a
DecodeError there (truncated bytes, a string field holding invalid UTF-8) becomes
UNKNOWN "Unexpected [DecodeError] raised by servicer method": a bug's status for
a caller's mistake. `tolerant_server` hands the generated add_*_to_server
function a view of the server whose handlers decode tolerantly: an unparsable
request reaches the guarded servicer as `Undecodable`, which the guard
(rpc_errors.guarded) authorizes like any call and then refuses with a field
violation on "request".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request the runtime could not parse; `problem` is the parser's message, no payload."""

    problem: str


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(payload: bytes) -> Any:
        try:
            return deserializer(payload)
        except DecodeError as error:
            return Undecodable(str(error))

    return decode


def _tolerant_handler(handler: Any) -> Any:
    if handler is None or not hasattr(handler, "_replace"):
        return handler
    return handler._replace(request_deserializer=tolerant(handler.request_deserializer))


class _TolerantGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def service(self, handler_call_details: Any) -> Any:
        return _tolerant_handler(self._inner.service(handler_call_details))


class _TolerantServer:
    """What add_*_to_server needs of a server, registering tolerant handlers on the real one."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_TolerantGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, handlers: Mapping[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service_name, {name: _tolerant_handler(h) for name, h in handlers.items()}
        )


def tolerant_server(server: grpc.aio.Server) -> Any:
    return _TolerantServer(server)
